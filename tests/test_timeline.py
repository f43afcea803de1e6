"""The Timeline page: clayops.timeline's buckets (sends by outcome, credits, DLQ inflow) and marks,
and the page and JSON views (dashboard.timeline_views)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from clayops import budget as budget_service
from clayops import timeline
from clayops.models import Attempt, AuditEntry, CircuitEvent, CreditReservation, Lead, Webhook
from tests.factories import make_dead_letter, make_lead, make_user, make_webhook

NOW = datetime(2026, 11, 30, 12, 0, 30, tzinfo=UTC)


def at(hh: int, mm: int, ss: int = 0, *, day: int = 30) -> datetime:
    return datetime(2026, 11, day, hh, mm, ss, tzinfo=UTC)


def attempt(webhook, when, outcome="accepted", error_class="", lead=None) -> Attempt:
    lead = lead or make_lead(webhook=webhook, state=Lead.State.ACCEPTED)
    return Attempt.objects.create(
        lead=lead, webhook=webhook, started_at=when, outcome=outcome, error_class=error_class
    )


def by_start(data) -> dict[datetime, dict]:
    return {b["start"]: b for b in data["buckets"]}


# --- ranges and windows ---------------------------------------------------------------------------


def test_it_reads_the_range_and_refuses_an_unknown_one():
    assert timeline.parse_range(None).name == "hour"
    assert timeline.parse_range("").name == "hour"
    assert timeline.parse_range("week").step == timedelta(hours=2)
    for bad in ("month", "HOUR", "hour ", "../x"):
        with pytest.raises(timeline.UnknownRange):
            timeline.parse_range(bad)


@pytest.mark.parametrize(
    ("name", "buckets", "first", "last"),
    [
        ("hour", 60, at(11, 1), at(12, 0)),
        ("day", 96, at(12, 15, day=29), at(12, 0)),
        ("week", 84, at(14, 0, day=23), at(12, 0)),
    ],
)
def test_it_covers_the_range_in_whole_buckets_ending_with_the_one_holding_now(db, name, buckets, first, last):
    data = timeline.timeline(range_name=name, now=NOW)
    starts = [b["start"] for b in data["buckets"]]
    assert len(starts) == buckets
    assert starts[0] == first and starts[-1] == last
    assert data["start"] == first and data["end"] == last + timeline.RANGES[name].step
    assert all(b - a == timeline.RANGES[name].step for a, b in zip(starts, starts[1:], strict=False))


# --- sends by outcome ---------------------------------------------------------------------------------


def test_it_counts_sends_by_outcome_per_minute_across_bucket_boundaries(webhook):
    attempt(webhook, at(11, 0, 59))  # before the window
    attempt(webhook, at(11, 1, 0), "dead", "client_error")  # first second of the first bucket
    attempt(webhook, at(11, 59, 59))  # last second of the 11:59 bucket
    attempt(webhook, at(12, 0, 0))  # first second of the last bucket
    attempt(webhook, at(12, 0, 29), "retry", "server_error")
    attempt(webhook, at(12, 0, 29), "rate_limited", "rate_limited")
    attempt(webhook, at(12, 1, 0))  # after the window (clock skew)

    data = timeline.timeline(range_name="hour", now=NOW)
    buckets = by_start(data)
    assert (buckets[at(11, 1)]["sends"], buckets[at(11, 1)]["dead"]) == (1, 1)
    assert (buckets[at(11, 59)]["sends"], buckets[at(11, 59)]["accepted"]) == (1, 1)
    last = buckets[at(12, 0)]
    assert (last["sends"], last["accepted"], last["retry"], last["rate_limited"]) == (3, 1, 1, 1)
    assert data["totals"]["sends"] == 5
    assert data["totals"]["accepted"] == 2 and data["totals"]["dead"] == 1
    assert sum(b["sends"] for b in data["buckets"]) == 5
    assert data["empty"] is False
    assert data["error_classes"] == [
        {"error_class": "client_error", "count": 1},
        {"error_class": "rate_limited", "count": 1},
        {"error_class": "server_error", "count": 1},
    ]
    assert [o["total"] for o in data["outcomes"]] == [2, 1, 1, 0, 1]


def test_it_puts_sends_in_15_minute_buckets_for_a_day(webhook):
    now = at(12, 7)
    attempt(webhook, at(11, 44, 59))
    attempt(webhook, at(11, 45, 0))
    attempt(webhook, at(11, 59, 59), "uncertain", "timeout")
    attempt(webhook, at(12, 6))
    attempt(webhook, at(12, 14, day=29))  # just before the window
    attempt(webhook, at(12, 15, day=29), "dead", "server_error")  # the first bucket

    buckets = by_start(timeline.timeline(range_name="day", now=now))
    assert buckets[at(11, 30)]["sends"] == 1
    assert (buckets[at(11, 45)]["sends"], buckets[at(11, 45)]["uncertain"]) == (2, 1)
    assert buckets[at(12, 0)]["sends"] == 1
    assert (buckets[at(12, 15, day=29)]["sends"], buckets[at(12, 15, day=29)]["dead"]) == (1, 1)
    assert sum(b["sends"] for b in buckets.values()) == 5


def test_it_puts_sends_in_2_hour_buckets_for_a_week_across_midnight(webhook):
    now = at(12, 7)
    attempt(webhook, at(13, 59, day=30))  # after now but in the bucket holding now
    attempt(webhook, at(11, 59))
    attempt(webhook, at(0, 30))
    attempt(webhook, at(23, 59, day=29))
    attempt(webhook, at(22, 0, day=29))
    attempt(webhook, at(14, 0, day=23))  # the first bucket
    attempt(webhook, at(13, 59, day=23))  # before the window

    data = timeline.timeline(range_name="week", now=now)
    buckets = by_start(data)
    assert buckets[at(12, 0)]["sends"] == 1
    assert buckets[at(10, 0)]["sends"] == 1
    assert buckets[at(0, 0)]["sends"] == 1
    assert buckets[at(22, 0, day=29)]["sends"] == 2
    assert buckets[at(14, 0, day=23)]["sends"] == 1
    assert data["totals"]["sends"] == 6


def test_it_aggregates_in_the_database_with_as_many_queries_for_many_rows_as_for_few(webhook):
    lead = make_lead(webhook=webhook)
    attempt(webhook, at(11, 30), lead=lead)
    with CaptureQueriesContext(connection) as few:
        timeline.timeline(range_name="day", now=NOW)
    Attempt.objects.bulk_create(
        Attempt(
            lead=lead, webhook=webhook, started_at=at(11, 30) - timedelta(minutes=i % 600), outcome="accepted"
        )
        for i in range(300)
    )
    with CaptureQueriesContext(connection) as many:
        data = timeline.timeline(range_name="day", now=NOW)
    assert data["totals"]["sends"] == 301
    assert len(many.captured_queries) == len(few.captured_queries)


# --- credits and the DLQ ----------------------------------------------------------------------------


def test_it_sums_the_credits_booked_when_reservations_were_settled(budget, webhook):
    lead = make_lead(webhook=webhook)

    def reserved(amount, when):
        return budget_service.reserve(budget=budget, amount=Decimal(amount), lead=lead, now=when)

    a = reserved("6", at(11, 58, 10))
    budget_service.settle(reservation_id=a.pk, now=at(11, 59, 50))  # settled in the 11:59 bucket
    b = reserved("6", at(11, 59, 55))
    budget_service.settle(reservation_id=b.pk, now=at(12, 0, 1))
    c = reserved("6", at(12, 0, 2))
    budget_service.record_actual(
        reservation_id=c.pk, actual=Decimal("7.5"), now=at(12, 0, 5)
    )  # Clay's figure
    d = reserved("6", at(12, 0, 3))
    budget_service.release(reservation_id=d.pk, now=at(12, 0, 4))  # not sent: not spent
    reserved("6", at(12, 0, 6))  # still held: not spent
    e = reserved("6", at(11, 0, 0))
    budget_service.settle(reservation_id=e.pk, now=at(11, 0, 30))  # before the window

    data = timeline.timeline(range_name="hour", now=NOW)
    buckets = by_start(data)
    assert buckets[at(11, 59)]["credits"] == 6.0
    assert buckets[at(12, 0)]["credits"] == 13.5
    assert data["totals"]["credits"] == 19.5
    assert sum(b["credits"] for b in data["buckets"]) == 19.5
    assert CreditReservation.objects.filter(state="settled").count() == 4


def test_it_counts_dlq_inflow_per_bucket(webhook):
    make_dead_letter(0, webhook=webhook, created_at=at(11, 59, 59))
    make_dead_letter(1, webhook=webhook, created_at=at(12, 0, 0))
    make_dead_letter(2, webhook=webhook, created_at=at(12, 0, 10))
    make_dead_letter(3, webhook=webhook, created_at=at(10, 0, 0))  # before the window

    data = timeline.timeline(range_name="hour", now=NOW)
    buckets = by_start(data)
    assert buckets[at(11, 59)]["dlq"] == 1
    assert buckets[at(12, 0)]["dlq"] == 2
    assert data["totals"]["dlq"] == 3
    assert data["empty"] is True  # entries but no sends in the range


# --- marks --------------------------------------------------------------------------------------------


def test_it_marks_breaker_transitions_pauses_and_operator_actions_in_time_order(webhook, operator):
    other = make_webhook(workspace=webhook.workspace, name="companies")
    CircuitEvent.objects.create(
        breaker=webhook.breaker, from_state="closed", to_state="open", reason="5 failures", at=at(11, 10)
    )
    CircuitEvent.objects.create(
        breaker=webhook.breaker, from_state="open", to_state="half_open", reason="cooldown", at=at(10, 0)
    )  # before the window
    attempt(other, at(11, 20, 5), "rate_limited", "rate_limited")
    attempt(other, at(11, 20, 40), "rate_limited", "rate_limited")  # same bucket: one mark
    attempt(webhook, at(11, 30), "retry", "payment_required")
    Webhook.objects.filter(pk=other.pk).update(paused_until=at(11, 20, 50))
    AuditEntry.objects.create(user=operator, action="dlq_retry", target="dlq", count=3, at=at(11, 40))
    AuditEntry.objects.create(action="budget_alert", target="budget:1", at=at(11, 41))  # system: no mark

    data = timeline.timeline(range_name="hour", now=NOW)
    marks = data["marks"]
    assert [(m["label"], m["kind"]) for m in marks] == [
        ("B1", "breaker"),
        ("P2", "pause"),
        ("P3", "pause"),
        ("P4", "pause"),
        ("O5", "operator"),
    ]
    assert marks[0]["text"] == "people: closed → open: 5 failures"
    assert marks[1]["at"] == at(11, 20, 5)
    assert marks[1]["text"] == (
        "companies: Clay answered 429 (2 sends until 11:20:40); the webhooks of acme pause for Retry-After"
    )
    assert marks[2]["text"] == "companies: pause (429 Retry-After) ends"
    assert marks[3]["text"] == "people: Clay answered 402 (1 send); workspace acme pauses (credits exhausted)"
    assert marks[4]["text"] == "olga: dlq retry dlq ×3"
    assert data["marks_truncated"] is False


def test_it_makes_one_pause_mark_for_a_run_of_429s_in_consecutive_buckets(webhook):
    for when in [at(11, 20, 5), at(11, 21, 10), at(11, 22, 59), at(11, 25, 0)]:
        attempt(webhook, when, "rate_limited", "rate_limited")
    attempt(webhook, at(11, 23, 0), "retry", "payment_required")  # another class: its own mark

    marks = timeline.timeline(range_name="hour", now=NOW)["marks"]
    assert [(m["at"], m["text"].split(";")[0]) for m in marks] == [
        (at(11, 20, 5), "people: Clay answered 429 (3 sends until 11:22:59)"),
        (at(11, 23, 0), "people: Clay answered 402 (1 send)"),
        (at(11, 25, 0), "people: Clay answered 429 (1 send)"),
    ]


def test_it_keeps_the_newest_marks_of_a_kind_past_the_cap(webhook, operator, monkeypatch):
    monkeypatch.setattr(timeline, "MAX_MARKS", 3)
    for minute in range(10, 15):
        AuditEntry.objects.create(user=operator, action=f"act_{minute}", at=at(11, minute))
    data = timeline.timeline(range_name="hour", now=NOW)
    assert [m["text"] for m in data["marks"]] == ["olga: act 12", "olga: act 13", "olga: act 14"]
    assert data["marks_truncated"] is True


# --- JSON ---------------------------------------------------------------------------------------------


def test_it_gives_the_chart_columns_in_epoch_seconds(webhook, operator):
    attempt(webhook, at(12, 0, 10), "dead", "client_error")
    AuditEntry.objects.create(user=operator, action="breaker_reset", target="webhook:1", at=at(11, 45, 30))
    out = timeline.as_json(timeline.timeline(range_name="hour", now=NOW))
    assert out["range"] == "hour" and out["step_seconds"] == 60
    assert len(out["x"]) == 60
    assert out["x"][0] == int(at(11, 1).timestamp()) and out["x"][-1] == int(at(12, 0).timestamp())
    assert set(out["series"]) == {
        "sends",
        "accepted",
        "retry",
        "rate_limited",
        "uncertain",
        "dead",
        "other",
        "credits",
        "dlq",
    }
    assert all(len(column) == 60 for column in out["series"].values())
    assert (
        out["series"]["dead"][-1] == 1
        and out["series"]["sends"][-1] == 1
        and sum(out["series"]["sends"]) == 1
    )
    assert out["marks"] == [
        {
            "t": at(11, 45, 30).timestamp(),
            "at": "2026-11-30T11:45:30+00:00",
            "kind": "operator",
            "kind_label": "Operator",
            "label": "O1",
            "text": "olga: breaker reset webhook:1",
        }
    ]


# --- views ----------------------------------------------------------------------------------------------


@pytest.fixture
def seeded(webhook, operator):
    now = timezone.now()
    attempt(webhook, now - timedelta(minutes=3))
    attempt(webhook, now - timedelta(minutes=3), "dead", "client_error")
    make_dead_letter(0, webhook=webhook, created_at=now - timedelta(minutes=3))
    CircuitEvent.objects.create(
        breaker=webhook.breaker,
        from_state="closed",
        to_state="open",
        reason="5 failures",
        at=now - timedelta(minutes=2),
    )
    AuditEntry.objects.create(user=operator, action="dlq_retry", target="dlq", at=now - timedelta(minutes=1))
    return webhook


def test_a_viewer_sees_the_page_with_marks_and_the_bucket_table(client, viewer, seeded):
    client.force_login(viewer)
    response = client.get(reverse("dashboard:timeline"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="/timeline/" aria-current="page">Timeline</a>' in html
    assert 'data-src="/timeline/data?range=hour"' in html
    assert "Last hour, in 1-minute buckets" in html
    assert "people: closed → open: 5 failures" in html and "olga: dlq retry dlq" in html
    assert "2 sends (accepted 1, retry later 0, rate-limited (429) 0, uncertain 0, dead 1)" in html
    assert "(1 of 60; every other bucket is all zeros)" in html
    assert "No sends in this range." not in html
    assert "vendor/uplot/uPlot.iife.min.js" in html and "clayops/timeline.js" in html


@pytest.mark.parametrize(
    ("name", "heading", "count"),
    [("day", "Last day, in 15-minute", 96), ("week", "Last week, in 2-hour", 84)],
)
def test_it_switches_ranges(client, viewer, seeded, name, heading, count):
    client.force_login(viewer)
    html = client.get(reverse("dashboard:timeline"), {"range": name}).content.decode()
    assert heading in html and f'data-src="/timeline/data?range={name}"' in html
    assert f'href="/timeline/?range={name}" aria-current="page"' in html
    data = client.get(reverse("dashboard:timeline_data"), {"range": name}).json()
    assert data["range"] == name and len(data["x"]) == count
    assert sum(data["series"]["sends"]) == 2 and sum(data["series"]["dlq"]) == 1


def test_it_says_so_when_there_are_no_sends(client, viewer):
    client.force_login(viewer)
    html = client.get(reverse("dashboard:timeline")).content.decode()
    assert "No sends in this range." in html
    assert "No breaker transitions, pauses or operator actions in this range." in html
    assert "(0 of 60; every other bucket is all zeros)" in html
    data = client.get(reverse("dashboard:timeline_data")).json()
    assert data["empty"] is True and data["marks"] == [] and sum(data["series"]["sends"]) == 0


@pytest.mark.parametrize("bad", ["month", "1", "hour'><script>"])
def test_a_bad_range_is_a_400_not_a_500(client, viewer, bad):
    client.force_login(viewer)
    page = client.get(reverse("dashboard:timeline"), {"range": bad})
    assert page.status_code == 400
    assert "unknown range" in page.content.decode() and "<script>" not in page.content.decode()
    data = client.get(reverse("dashboard:timeline_data"), {"range": bad})
    assert data.status_code == 400 and "unknown range" in data.json()["error"]


def test_the_json_has_the_chart_shape(client, viewer, seeded):
    client.force_login(viewer)
    response = client.get(reverse("dashboard:timeline_data"))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    data = response.json()
    assert {
        "range",
        "start",
        "end",
        "x",
        "series",
        "outcomes",
        "totals",
        "marks",
        "error_classes",
        "empty",
    } <= set(data)
    assert len(data["x"]) == 60 and data["step_seconds"] == 60
    assert [o["key"] for o in data["outcomes"]] == ["accepted", "retry", "rate_limited", "uncertain", "dead"]
    assert data["totals"]["sends"] == 2 and data["totals"]["dead"] == 1
    assert [m["kind"] for m in data["marks"]] == ["breaker", "operator"]
    assert data["error_classes"] == [{"error_class": "client_error", "count": 1}]


def test_anonymous_is_sent_to_the_login_and_a_user_without_a_role_is_refused(client, db):
    for name in ("dashboard:timeline", "dashboard:timeline_data"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(make_user("nobody"))
    assert client.get(reverse("dashboard:timeline")).status_code == 403
    assert client.get(reverse("dashboard:timeline_data")).status_code == 403


def test_the_page_carries_the_strict_policy(client, viewer):
    client.force_login(viewer)
    policy = client.get(reverse("dashboard:timeline"))["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
