"""The credit budget, pinned where mutation testing (bench/mutation.sh) found it unasserted: which rows
an operation touches, the times it records, its return values, and the alert's audit entry."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import QuerySet

from clayops import budget as svc
from clayops.models import AuditEntry, CreditBudget, CreditReservation, CreditUsage
from tests.factories import make_budget, make_leads

D = Decimal
NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOON + timedelta(minutes=7)


@pytest.fixture
def hundred(db) -> CreditBudget:
    return make_budget(name="hundred", daily_limit=D("100"), alert_percent=80)


def reserve(b: CreditBudget, amount="10", **kw) -> CreditReservation:
    return svc.reserve(budget=b, amount=D(amount), now=NOON, **kw)


def state(r: CreditReservation) -> CreditReservation:
    r.refresh_from_db()
    return r


def totals(b: CreditBudget) -> tuple[Decimal, Decimal]:
    u = svc.usage_for(b, now=NOON)
    return u.reserved, u.spent


def test_it_names_the_refused_amount_in_the_error(hundred):
    with pytest.raises(ValueError, match=r"^amount must be a number of credits, got 'lots'$"):
        svc.reserve(budget=hundred, amount="lots", now=NOON)
    with pytest.raises(
        ValueError, match=r"^amount must be a non-negative number of credits, got Decimal\('-1'\)$"
    ):
        reserve(hundred, amount="-1")
    r = reserve(hundred)
    with pytest.raises(ValueError, match=r"^actual must be a non-negative number of credits"):
        svc.record_actual(reservation_id=r.pk, actual=D("-2"), now=NOON)
    with pytest.raises(ValueError, match=r"^limit must be a number of credits, got 'none'$"):
        svc.set_daily_limit(budget=hundred, limit="none")


def test_it_accepts_a_reservation_of_zero_credits(hundred):
    r = reserve(hundred, amount="0")
    assert r is not None and state(r).amount == D("0")


def test_it_keeps_each_budget_in_its_own_usage_row(hundred):
    other = make_budget(name="other")
    mine, theirs = svc.usage_for(hundred, now=NOON), svc.usage_for(other, now=NOON)
    assert mine.pk != theirs.pk
    assert (mine.budget_id, theirs.budget_id) == (hundred.pk, other.pk)
    assert svc.usage_for(other, now=NOON).pk == theirs.pk


def test_it_reads_the_row_another_worker_created_first(hundred, monkeypatch):
    other = make_budget(name="other")
    svc.usage_for(hundred, now=NOON)
    svc.usage_for(other, now=NOON)
    mine = svc.usage_for(hundred, now=NOON - timedelta(days=1))
    theirs = svc.usage_for(hundred, now=NOON)
    # The first read misses (the other worker had not committed yet): the insert then fails.
    monkeypatch.setattr(QuerySet, "first", lambda self: None)
    assert svc.usage_for(hundred, now=NOON).pk == theirs.pk
    assert svc.usage_for(hundred, now=NOON - timedelta(days=1)).pk == mine.pk


def test_it_dates_reservations_at_the_given_time(hundred, settings):
    settings.CLAYOPS_RESERVATION_TTL_SECONDS = 120
    r = state(reserve(hundred))
    assert (r.created_at, r.expires_at) == (NOON, NOON + timedelta(seconds=120))
    leads = make_leads(2)
    made = svc.reserve_many(budget=hundred, amount=D("1"), lead_ids=[x.pk for x in leads], now=NOON)
    assert {(r.created_at, r.expires_at) for r in CreditReservation.objects.filter(pk__in=made.values())} == {
        (NOON, NOON + timedelta(seconds=120))
    }
    made = svc.reserve_many(budget=hundred, amount=D("1"), lead_ids=[leads[0].pk], now=NOON, ttl_seconds=5)
    assert CreditReservation.objects.get(pk=made[leads[0].pk]).expires_at == NOON + timedelta(seconds=5)


def test_it_reserves_as_many_one_credit_leads_as_fit(hundred):
    leads = make_leads(8)
    svc.reserve(budget=hundred, amount=D("95"), now=NOON)
    made = svc.reserve_many(budget=hundred, amount=D("1"), lead_ids=[x.pk for x in leads], now=NOON)
    assert list(made) == [x.pk for x in leads[:5]]
    assert totals(hundred) == (D("100"), D("0"))


def test_it_reserves_nothing_of_zero_credits_once_spend_is_past_the_limit(hundred):
    r = reserve(hundred, amount="90")
    svc.record_actual(reservation_id=r.pk, actual=D("120"), now=NOON)
    leads = make_leads(3)
    assert svc.reserve_many(budget=hundred, amount=D("0"), lead_ids=[x.pk for x in leads], now=NOON) == {}


def test_it_asks_for_fewer_each_time_even_when_the_budget_seems_to_have_room(hundred, monkeypatch):
    calls = []

    def never_holds(usage, budget, total, actions=0):
        calls.append(total)
        assert len(calls) <= 10, "reserve_many kept asking"
        return False

    monkeypatch.setattr(svc, "_hold", never_holds)
    monkeypatch.setattr(svc, "remaining", lambda budget, now=None: D("1000"))  # a racing worker freed a lot
    leads = make_leads(4)
    assert svc.reserve_many(budget=hundred, amount=D("1"), lead_ids=[x.pk for x in leads], now=NOON) == {}
    assert calls == [D("4"), D("3"), D("2"), D("1")]


def test_it_settles_and_releases_only_the_reservations_named(hundred):
    a, b, c, d = (reserve(hundred) for _ in range(4))
    assert svc.settle_many([a.pk], now=LATER) == 1
    assert svc.release_many([b.pk], now=LATER) == 1
    a, b, c, d = (state(r) for r in (a, b, c, d))
    assert (a.state, a.charged, a.closed_at) == ("settled", D("10"), LATER)
    assert (b.state, b.charged, b.closed_at) == ("released", None, LATER)
    assert (c.state, d.state) == ("held", "held")
    assert totals(hundred) == (D("20"), D("10"))


def test_it_records_the_time_of_a_late_settlement_and_of_its_alert(hundred):
    r = reserve(hundred, amount="85")
    svc.release(reservation_id=r.pk, now=NOON)
    assert svc.settle_many([r.pk], now=LATER) == 1
    r = state(r)
    assert (r.state, r.charged, r.closed_at) == ("settled", D("85"), NOON)  # closed when it was released
    assert svc.usage_for(hundred, now=NOON).alerted_at == LATER
    assert AuditEntry.objects.get(action="budget_alert").at == LATER


def test_it_dates_the_alert_of_a_batch_settlement(hundred):
    rs = [reserve(hundred, amount="45") for _ in range(2)]
    svc.settle_many([r.pk for r in rs], now=LATER)
    assert svc.usage_for(hundred, now=NOON).alerted_at == LATER


def test_it_extends_only_the_held_reservations_named(hundred):
    a, b, c = (reserve(hundred) for _ in range(3))
    svc.release(reservation_id=b.pk, now=NOON)
    until = NOON + timedelta(hours=2)
    assert svc.extend_holds([a.pk, b.pk], until=until) == 1
    assert [state(r).expires_at == until for r in (a, b, c)] == [True, False, False]


def test_it_extends_only_the_held_reservations_of_the_leads_named(hundred):
    x, y, z = make_leads(3)
    a, b, c = (reserve(hundred, lead=lead) for lead in (x, y, z))
    svc.release(reservation_id=b.pk, now=NOON)
    until = NOON + timedelta(hours=2)
    assert svc.extend_holds_for_leads([x.pk, y.pk], until=until) == 1
    assert [state(r).expires_at == until for r in (a, b, c)] == [True, False, False]


def test_it_releases_only_what_the_leads_named_hold(hundred):
    x, y = make_leads(2)
    a, b = reserve(hundred, lead=x), reserve(hundred, lead=y)
    assert svc.release_for_leads([x.pk], now=LATER) == 1
    assert (state(a).state, state(a).closed_at, state(b).state) == ("released", LATER, "held")


def test_it_settles_a_leads_held_reservation_at_the_estimate_when_the_callback_gives_no_cost(hundred):
    (lead,) = make_leads(1)
    r = reserve(hundred, lead=lead)
    assert svc.settle_for_lead(lead.pk, actual=None, now=LATER) is True
    assert (state(r).state, state(r).charged, state(r).closed_at) == ("settled", D("10"), LATER)
    assert svc.settle_for_lead(lead.pk, actual=None, now=LATER) is False
    assert svc.settle_for_lead(make_leads(1)[0].pk, actual=None, now=LATER) is False  # nothing reserved
    assert totals(hundred) == (D("0"), D("10"))


def test_it_settles_a_leads_held_reservation_at_the_reported_cost(hundred):
    (lead,) = make_leads(1)
    r = reserve(hundred, lead=lead)
    assert svc.settle_for_lead(lead.pk, actual=D("4"), now=LATER) is True
    assert (state(r).state, state(r).charged, state(r).actual, state(r).closed_at) == (
        "settled",
        D("4"),
        D("4"),
        LATER,
    )


def test_it_answers_false_for_an_unknown_reservation(hundred):
    assert svc.settle(reservation_id=987654, now=NOON) is False
    assert svc.release(reservation_id=987654, now=NOON) is False


def test_it_closes_reservations_at_the_given_time(hundred):
    a, b = reserve(hundred), reserve(hundred)
    svc.settle(reservation_id=a.pk, now=LATER)
    svc.release(reservation_id=b.pk, now=LATER)
    assert (state(a).closed_at, state(b).closed_at) == (LATER, LATER)


def test_it_charges_only_the_released_reservation_it_settles(hundred):
    a, b = reserve(hundred), reserve(hundred)
    svc.release(reservation_id=a.pk, now=NOON)
    svc.release(reservation_id=b.pk, now=NOON)
    assert svc.settle(reservation_id=a.pk, amount=D("7"), now=LATER) is True
    assert (state(a).state, state(a).charged) == ("settled", D("7"))
    assert (state(b).state, state(b).charged) == ("released", None)
    assert totals(hundred) == (D("0"), D("7"))


def test_it_records_the_actual_cost_on_that_reservation_only(hundred):
    a, b = reserve(hundred), reserve(hundred)
    assert svc.record_actual(reservation_id=a.pk, actual=D("3"), now=LATER) is True
    assert (state(a).state, state(a).charged, state(a).closed_at) == ("settled", D("3"), LATER)
    assert (state(b).state, state(b).actual) == ("held", None)
    assert svc.record_actual(reservation_id=b.pk, actual=D("2"), now=LATER) is True


def test_it_records_the_actual_cost_of_a_released_reservation_as_its_charge(hundred):
    r = reserve(hundred)
    svc.release(reservation_id=r.pk, now=NOON)
    svc.record_actual(reservation_id=r.pk, actual=D("85"), now=LATER)
    assert (state(r).state, state(r).charged, state(r).actual) == ("settled", D("85"), D("85"))
    assert svc.usage_for(hundred, now=NOON).alerted_at == LATER


def test_it_corrects_a_settlement_that_recorded_no_charge_against_the_estimate(hundred):
    # A reservation settled before the charge was recorded: it was charged at its estimate.
    r = reserve(hundred)
    svc.settle(reservation_id=r.pk, now=NOON)
    CreditReservation.objects.filter(pk=r.pk).update(charged=None)
    assert svc.record_actual(reservation_id=r.pk, actual=D("4"), now=NOON) is True
    assert totals(hundred) == (D("0"), D("4"))


def test_it_releases_expired_reservations_at_the_given_time_and_a_thousand_per_call(hundred):
    r = reserve(hundred, ttl_seconds=60)
    assert svc.reap_expired(now=LATER) == 1
    assert (state(r).state, state(r).closed_at) == ("released", LATER)
    usage = svc.usage_for(hundred, now=NOON)
    CreditReservation.objects.bulk_create(
        CreditReservation(usage=usage, amount=D("0"), created_at=NOON, expires_at=NOON) for _ in range(1001)
    )
    assert svc.reap_expired(now=LATER) == 1000
    assert CreditReservation.objects.filter(state="held").count() == 1


def test_it_audits_a_limit_change_at_the_time_it_took_effect(hundred, operator):
    svc.set_daily_limit(budget=hundred, limit=D("250"), by=operator)
    assert hundred.daily_limit == D("250")
    entry = AuditEntry.objects.get(action="budget_limit_change")
    hundred.refresh_from_db()
    assert (entry.user, entry.target, entry.detail) == (
        operator,
        f"budget:{hundred.pk} hundred",
        {"from": "100.00", "to": "250.00"},
    )
    assert hundred.updated_at == entry.at


def spend(b: CreditBudget, amount: str) -> CreditUsage:
    usage = svc.usage_for(b, now=NOON)
    CreditUsage.objects.filter(pk=usage.pk).update(spent=D(amount))
    return usage


def test_it_alerts_at_the_threshold_with_the_figures_in_the_audit_and_the_log(db, caplog):
    b = make_budget(name="three-hundred", daily_limit=D("300"), alert_percent=80)
    usage = spend(b, "239.99")
    assert svc.check_alert(usage, now=LATER) is False  # 80 % of 300 is 240
    spend(b, "245")
    with caplog.at_level(logging.WARNING, logger="clayops.budget"):
        assert svc.check_alert(usage, now=LATER) is True
    assert svc.check_alert(usage.pk, now=LATER) is False  # once a day
    entry = AuditEntry.objects.get(action="budget_alert")
    assert (entry.target, entry.at) == (f"budget:{b.pk} three-hundred", LATER)
    assert entry.detail == {
        "day": "2026-03-01",
        "spent": "245.00",
        "limit": "300.00",
        "percent": 81.7,
        "alert_percent": 80,
    }
    assert [r.getMessage() for r in caplog.records if r.name == "clayops.budget"] == [
        "budget three-hundred: 82% of the daily limit spent on 2026-03-01 (245.00 of 300.00 credits)"
    ]


def test_it_alerts_just_at_the_threshold_and_not_a_cent_below(db):
    b = make_budget(name="b", daily_limit=D("100"), alert_percent=80)
    usage = spend(b, "79.99")
    assert svc.check_alert(usage.pk, now=NOON) is False
    spend(b, "80")
    assert svc.check_alert(usage.pk, now=NOON) is True


def test_it_alerts_on_a_one_credit_limit_but_never_on_a_zero_limit(db):
    one = make_budget(name="one", daily_limit=D("1"))
    assert svc.check_alert(spend(one, "1").pk, now=NOON) is True
    zero = make_budget(name="zero", daily_limit=D("0"))
    assert svc.check_alert(spend(zero, "5").pk, now=NOON) is False
    assert svc.check_alert(987654, now=NOON) is False  # no such usage row
    assert AuditEntry.objects.filter(action="budget_alert").count() == 1


def test_it_alerts_for_the_usage_row_asked_about_only(db):
    quiet = make_budget(name="quiet", daily_limit=D("100"))
    loud = make_budget(name="loud", daily_limit=D("100"))
    spend(loud, "99")  # over its threshold, not yet checked
    assert svc.check_alert(spend(quiet, "10").pk, now=NOON) is False
    assert svc.usage_for(loud, now=NOON).alerted_at is None
