"""The daily credit budget: reserve, settle, release, actual costs, reaping, day boundary, limit, alert."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from clayops import budget as svc
from clayops.models import AuditEntry, CreditBudget, CreditReservation, CreditUsage
from tests.factories import make_budget, make_leads

D = Decimal
NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def small(db) -> CreditBudget:
    return make_budget(name="small", daily_limit=D("20"), alert_percent=80)


def usage(b: CreditBudget, now=NOON) -> CreditUsage:
    return svc.usage_for(b, now=now)


def totals(b: CreditBudget, now=NOON) -> tuple[Decimal, Decimal]:
    u = usage(b, now)
    return u.reserved, u.spent


def test_it_reserves_until_the_limit_and_then_refuses(small):
    held = [svc.reserve(budget=small, amount=D("6"), now=NOON) for _ in range(3)]
    assert all(r is not None and r.state == "held" for r in held)
    assert svc.reserve(budget=small, amount=D("6"), now=NOON) is None  # 18 + 6 > 20
    assert svc.reserve(budget=small, amount=D("2"), now=NOON) is not None  # exactly 20 is allowed
    assert svc.reserve(budget=small, amount=D("0.01"), now=NOON) is None
    assert totals(small) == (D("20"), D("0"))
    assert small.remaining(NOON) == D("0")
    assert CreditReservation.objects.count() == 4


def test_it_gives_reservations_an_expiry(small, settings):
    settings.CLAYOPS_RESERVATION_TTL_SECONDS = 120
    r = svc.reserve(budget=small, amount=D("1"), now=NOON)
    assert r.expires_at == NOON + timedelta(seconds=120)
    r = svc.reserve(budget=small, amount=D("1"), now=NOON, ttl_seconds=5)
    assert r.expires_at == NOON + timedelta(seconds=5)


def test_it_refuses_negative_or_garbage_amounts(small):
    with pytest.raises(ValueError):
        svc.reserve(budget=small, amount=D("-1"), now=NOON)
    with pytest.raises(ValueError):
        svc.reserve(budget=small, amount="lots", now=NOON)
    assert totals(small) == (D("0"), D("0"))


def test_it_settles_once(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    assert svc.settle(reservation_id=r.pk, now=NOON) is True
    assert svc.settle(reservation_id=r.pk, now=NOON) is False  # a job that runs twice
    assert totals(small) == (D("0"), D("6"))
    r.refresh_from_db()
    assert (r.state, r.charged) == ("settled", D("6"))


def test_it_releases_once_and_never_after_settling(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    assert svc.release(reservation_id=r.pk) is True
    assert svc.release(reservation_id=r.pk) is False
    assert totals(small) == (D("0"), D("0"))
    s = svc.reserve(budget=small, amount=D("6"), now=NOON)
    svc.settle(reservation_id=s.pk, now=NOON)
    assert svc.release(reservation_id=s.pk) is False
    assert totals(small) == (D("0"), D("6"))


def test_it_charges_a_reaped_reservation_whose_row_clay_took_after_all(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    svc.release(reservation_id=r.pk)  # the reaper thought its job was dead
    assert svc.settle(reservation_id=r.pk, now=NOON) is True  # the slow worker got its 2xx
    assert svc.settle(reservation_id=r.pk, now=NOON) is False
    assert totals(small) == (D("0"), D("6"))


def test_it_corrects_spent_to_the_actual_cost_once(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    svc.settle(reservation_id=r.pk, now=NOON)
    assert svc.record_actual(reservation_id=r.pk, actual=D("4.5"), now=NOON) is True
    assert totals(small) == (D("0"), D("4.5"))
    assert svc.record_actual(reservation_id=r.pk, actual=D("4.5"), now=NOON) is False  # repeated callback
    assert svc.record_actual(reservation_id=r.pk, actual=D("9"), now=NOON) is False
    assert totals(small) == (D("0"), D("4.5"))
    r.refresh_from_db()
    assert (r.actual, r.charged) == (D("4.5"), D("4.5"))


def test_it_settles_a_held_reservation_at_the_actual_cost(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    assert svc.record_actual(reservation_id=r.pk, actual=D("8"), now=NOON) is True
    assert totals(small) == (D("0"), D("8"))
    assert svc.settle(reservation_id=r.pk, now=NOON) is False  # the 2xx path arriving late changes nothing
    assert totals(small) == (D("0"), D("8"))


def test_it_corrects_a_settlement_made_at_an_explicit_amount(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    svc.settle(reservation_id=r.pk, amount=D("3"), now=NOON)
    assert totals(small) == (D("0"), D("3"))
    svc.record_actual(reservation_id=r.pk, actual=D("5"), now=NOON)
    assert totals(small) == (D("0"), D("5"))


def test_it_charges_the_actual_cost_of_a_released_reservation(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    svc.release(reservation_id=r.pk)
    assert svc.record_actual(reservation_id=r.pk, actual=D("7"), now=NOON) is True
    assert svc.settle(reservation_id=r.pk, now=NOON) is False  # not charged twice
    assert totals(small) == (D("0"), D("7"))


def test_it_lets_spent_pass_the_limit_when_clay_charged_more_and_then_refuses(small):
    r = svc.reserve(budget=small, amount=D("18"), now=NOON)
    svc.settle(reservation_id=r.pk, now=NOON)
    svc.record_actual(reservation_id=r.pk, actual=D("23"), now=NOON)
    assert totals(small) == (D("0"), D("23"))  # reality, although above the limit
    assert small.remaining(NOON) == D("0")
    assert svc.reserve(budget=small, amount=D("0.5"), now=NOON) is None


def test_it_reaps_expired_held_reservations_only(small):
    dead = svc.reserve(budget=small, amount=D("5"), now=NOON, ttl_seconds=60)
    alive = svc.reserve(budget=small, amount=D("5"), now=NOON, ttl_seconds=600)
    done = svc.reserve(budget=small, amount=D("5"), now=NOON, ttl_seconds=60)
    svc.settle(reservation_id=done.pk, now=NOON)
    assert svc.reap_expired(now=NOON + timedelta(seconds=30)) == 0
    assert svc.reap_expired(now=NOON + timedelta(seconds=61)) == 1
    assert svc.reap_expired(now=NOON + timedelta(seconds=61)) == 0
    states = dict(CreditReservation.objects.values_list("pk", "state"))
    assert states == {dead.pk: "released", alive.pk: "held", done.pk: "settled"}
    assert totals(small) == (D("5"), D("5"))


def test_it_starts_a_new_day_at_midnight_in_the_budget_time_zone(db):
    la = make_budget(name="la", daily_limit=D("10"), timezone="America/Los_Angeles")
    tz = ZoneInfo("America/Los_Angeles")
    late = datetime(2026, 3, 1, 23, 30, tzinfo=tz)  # 07:30 UTC on March 2nd
    early = datetime(2026, 3, 2, 0, 30, tzinfo=tz)
    assert svc.reserve(budget=la, amount=D("10"), now=late) is not None
    assert svc.reserve(budget=la, amount=D("1"), now=late) is None
    assert svc.reserve(budget=la, amount=D("10"), now=early) is not None  # a fresh day
    days = dict(CreditUsage.objects.values_list("day", "reserved"))
    assert days == {datetime(2026, 3, 1).date(): D("10"), datetime(2026, 3, 2).date(): D("10")}


def test_it_settles_against_the_day_that_reserved(db):
    la = make_budget(name="la", daily_limit=D("10"), timezone="America/Los_Angeles")
    tz = ZoneInfo("America/Los_Angeles")
    r = svc.reserve(budget=la, amount=D("4"), now=datetime(2026, 3, 1, 23, 59, tzinfo=tz))
    svc.settle(reservation_id=r.pk, now=datetime(2026, 3, 2, 0, 1, tzinfo=tz))
    yesterday = CreditUsage.objects.get(day="2026-03-01")
    assert (yesterday.reserved, yesterday.spent) == (D("0"), D("4"))
    assert la.remaining(datetime(2026, 3, 2, 0, 2, tzinfo=tz)) == D("10")


def test_it_applies_a_limit_change_at_once_and_audits_it(small, operator):
    stale = CreditBudget.objects.get(pk=small.pk)  # a worker's copy, loaded before the change
    svc.reserve(budget=stale, amount=D("18"), now=NOON)
    svc.set_daily_limit(budget=small, limit=D("30"), by=operator)
    assert svc.reserve(budget=stale, amount=D("12"), now=NOON) is not None  # the stale copy says 20
    svc.set_daily_limit(budget=small, limit=D("35"), by=operator)
    svc.set_daily_limit(budget=small, limit=D("25"), by=operator)
    assert svc.reserve(budget=stale, amount=D("1"), now=NOON) is None  # lowered: 30 held > 25
    entry = AuditEntry.objects.filter(action="budget_limit_change").first()
    assert entry.user == operator
    assert entry.detail == {"from": "35.00", "to": "25.00"}
    assert AuditEntry.objects.filter(action="budget_limit_change").count() == 3
    small.refresh_from_db()
    assert small.daily_limit == D("25")


def test_it_alerts_once_a_day_when_spend_passes_the_alert_share(small, caplog):
    caplog.set_level(logging.WARNING, logger="clayops.budget")
    first = svc.reserve(budget=small, amount=D("15"), now=NOON)
    svc.settle(reservation_id=first.pk, now=NOON)  # 75 %: below 80 %
    assert not AuditEntry.objects.filter(action="budget_alert").exists()
    for _ in range(3):
        r = svc.reserve(budget=small, amount=D("1"), now=NOON)
        svc.settle(reservation_id=r.pk, now=NOON)  # 80 %, 85 %, 90 %
    alerts = AuditEntry.objects.filter(action="budget_alert")
    assert alerts.count() == 1
    assert alerts.get().user is None
    assert alerts.get().detail["spent"] == "16.00"
    assert usage(small).alerted_at == NOON
    assert [r.name for r in caplog.records if r.levelno == logging.WARNING] == ["clayops.budget"]
    tomorrow = NOON + timedelta(days=1)
    r = svc.reserve(budget=small, amount=D("17"), now=tomorrow)
    svc.settle(reservation_id=r.pk, now=tomorrow)
    assert alerts.count() == 2


def test_it_alerts_when_the_actual_cost_pushes_spend_over(small):
    r = svc.reserve(budget=small, amount=D("6"), now=NOON)
    svc.settle(reservation_id=r.pk, now=NOON)
    assert not AuditEntry.objects.filter(action="budget_alert").exists()
    svc.record_actual(reservation_id=r.pk, actual=D("17"), now=NOON)
    assert AuditEntry.objects.filter(action="budget_alert").count() == 1


def test_it_keeps_fractional_credits_exact(small):
    # SQLite stores decimals as floats: 0.1 + 0.2 + 1.1 - 0.1 - 1.1 - 0.2 is -5.6e-17 there, which the
    # reserved >= 0 constraint would refuse. Every update rounds to the cent in SQL.
    held = [svc.reserve(budget=small, amount=D(x), now=NOON) for x in ("0.1", "0.2", "1.1")]
    for r in (held[0], held[2], held[1]):
        assert svc.release(reservation_id=r.pk)
    assert totals(small) == (D("0"), D("0"))
    svc.set_daily_limit(budget=small, limit=D("0.3"))
    assert all(svc.reserve(budget=small, amount=D("0.1"), now=NOON) for _ in range(3))
    assert svc.reserve(budget=small, amount=D("0.01"), now=NOON) is None


def test_it_reads_the_remaining_credits_without_writing(small):
    assert small.remaining(NOON) == D("20")
    assert not CreditUsage.objects.exists()
    svc.reserve(budget=small, amount=D("6.5"), now=NOON)
    assert small.remaining(NOON) == D("13.5")
    assert svc.remaining(small, now=NOON) == D("13.5")


def test_it_reserves_a_batch_only_as_far_as_the_budget_goes(small):
    ids = [lead.pk for lead in make_leads(5)]
    got = svc.reserve_many(budget=small, amount=D("6"), lead_ids=ids, now=NOON)
    assert list(got) == ids[:3]  # 3 × 6 = 18 ≤ 20; the first leads of the list win
    assert totals(small) == (D("18"), D("0"))
    held = CreditReservation.objects.filter(pk__in=got.values())
    assert {(r.lead_id, r.amount, r.state) for r in held} == {(pk, D("6"), "held") for pk in ids[:3]}
    assert svc.reserve_many(budget=small, amount=D("6"), lead_ids=ids[3:], now=NOON) == {}
    assert totals(small) == (D("18"), D("0"))


def test_it_settles_and_releases_batches_once_each(small):
    ids = [lead.pk for lead in make_leads(3)]
    got = list(svc.reserve_many(budget=small, amount=D("6"), lead_ids=ids, now=NOON).values())
    svc.release(reservation_id=got[0])  # the reaper took one while its request was out
    assert svc.settle_many(got, now=NOON) == 3  # the reaped one is charged too: Clay took the row
    assert svc.settle_many(got, now=NOON) == 0  # a job that runs twice
    assert totals(small) == (D("0"), D("18"))
    more = list(svc.reserve_many(budget=small, amount=D("1"), lead_ids=ids[:2], now=NOON).values())
    assert svc.release_many(more) == 2 and svc.release_many(more) == 0
    assert totals(small) == (D("0"), D("18"))
    assert set(CreditReservation.objects.filter(pk__in=more).values_list("state", flat=True)) == {"released"}


def test_it_alerts_when_a_batch_settlement_crosses_the_alert_share(small):
    ids = [lead.pk for lead in make_leads(3)]
    got = svc.reserve_many(budget=small, amount=D("6"), lead_ids=ids, now=NOON)
    svc.settle_many(got.values(), now=NOON)  # 18 of 20 = 90 % ≥ 80 %
    assert AuditEntry.objects.filter(action="budget_alert").count() == 1
