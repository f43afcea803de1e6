"""clayops.deferral: every waiting lead says why and until when, from its recorded reason and the
current state of its budget, breaker and pauses; the dashboard shows it on the leads list, the lead
page, the DLQ and as a banner on the overview's webhook card."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from clayops import counts, deferral
from clayops.models import CircuitBreaker, CreditUsage, Lead
from tests.factories import make_budget, make_dead_letter, make_lead, make_leads, make_webhook, make_workspace

S = Lead.State
HX = {"HTTP_HX_REQUEST": "true"}
# 20:47:50 UTC = 12:47:50 in Los Angeles (PST, UTC-8): the next budget day starts at 08:00 UTC.
NOW = datetime(2026, 11, 30, 20, 47, 50, tzinfo=UTC)
LA_MIDNIGHT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def exhaust(budget, *, now=NOW):
    CreditUsage.objects.update_or_create(
        budget=budget, day=budget.day_for(now), defaults={"spent": budget.daily_limit}
    )


@pytest.fixture
def la_webhook(db):
    budget = make_budget(name="west", daily_limit=Decimal("60"), timezone="America/Los_Angeles")
    workspace = make_workspace(name="west", budget=budget)
    return make_webhook(workspace=workspace, name="people")


def deferred(webhook, reason, *, until=None, state=S.DEFERRED, **fields):
    return make_lead(1, webhook=webhook, state=state, defer_reason=reason, next_attempt_at=until, **fields)


# --- each cause ---------------------------------------------------------------------------------


def test_budget_exhausted_resumes_at_the_next_midnight_in_the_workspaces_time_zone(la_webhook):
    exhaust(la_webhook.workspace.budget)
    lead = deferred(la_webhook, deferral.REASON_BUDGET)

    d = deferral.explain(lead, now=NOW)

    assert d.kind == deferral.BUDGET
    assert d.until == LA_MIDNIGHT
    assert d.text == "budget used up: resumes at 00:00 America/Los_Angeles (in 11 h 12 min)"
    assert not d.countdown  # hours away: the server renders the time left, the browser does not count


def test_budget_that_has_room_again_says_the_drain_releases_the_lead(la_webhook):
    lead = deferred(la_webhook, deferral.REASON_BUDGET)  # no spend today: 60 credits left

    d = deferral.explain(lead, now=NOW)

    assert d.kind == deferral.CLEARED and d.until is None
    assert d.text == "budget has room again: released by the next offline drain (at the workspace's pace)"


def test_budget_of_zero_says_the_limit_must_be_raised(la_webhook):
    budget = la_webhook.workspace.budget
    budget.daily_limit = Decimal("0")
    budget.save()
    d = deferral.explain(deferred(la_webhook, deferral.REASON_BUDGET), now=NOW)
    assert d.kind == deferral.BUDGET and d.until is None
    assert d.text == "budget limit is 0: nothing is sent until the daily limit is raised"


def test_open_breaker_says_when_the_cooldown_ends(webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state=CircuitBreaker.State.OPEN, opened_at=NOW - timedelta(seconds=10), cooldown_seconds=30
    )
    lead = deferred(webhook, "circuit open", until=NOW + timedelta(seconds=5))  # stale: live wins

    d = deferral.explain(lead, now=NOW)

    assert d.kind == deferral.BREAKER
    assert d.until == NOW + timedelta(seconds=20)
    assert d.text == "circuit open: next probe at 20:48:10 UTC (in 20 s)"
    assert d.countdown


def test_forced_open_breaker_waits_for_an_operator(webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state=CircuitBreaker.State.FORCED_OPEN, opened_at=NOW
    )
    d = deferral.explain(deferred(webhook, "circuit forced_open"), now=NOW)
    assert d.kind == deferral.BREAKER and d.until is None
    assert d.text == "circuit paused by an operator: waits until someone resets the breaker"


def test_half_open_breaker_says_it_is_probing(webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(state=CircuitBreaker.State.HALF_OPEN, opened_at=NOW)
    d = deferral.explain(deferred(webhook, "circuit half_open"), now=NOW)
    assert d.text == "circuit half-open: probing Clay: released once the probes succeed"


def test_429_pause_says_until_when_the_pause_ends(webhook):
    webhook.paused_until = NOW + timedelta(seconds=40)
    webhook.save()
    lead = deferred(webhook, deferral.REASON_WEBHOOK_429, until=NOW + timedelta(seconds=10))

    d = deferral.explain(lead, now=NOW)

    assert d.kind == deferral.RATE_LIMITED
    assert d.until == NOW + timedelta(seconds=40)  # the pause was extended since: the later one
    assert d.text == "paused by Clay's 429 until 20:48:30 UTC (in 40 s)"


def test_a_lead_in_retry_wait_after_a_429_says_the_pause_too(webhook):
    webhook.paused_until = NOW + timedelta(seconds=30)
    webhook.save()
    lead = make_lead(
        2,
        webhook=webhook,
        state=S.RETRY_WAIT,
        error_class="rate_limited",
        next_attempt_at=NOW + timedelta(seconds=30),
    )
    assert deferral.explain(lead, now=NOW).text == "paused by Clay's 429 until 20:48:20 UTC (in 30 s)"


def test_402_pause_says_clay_is_out_of_credits_until_when(webhook):
    ws = webhook.workspace
    ws.paused_until = NOW + timedelta(minutes=59, seconds=50)
    ws.pause_reason = "Clay answered 402: credits or actions exhausted"
    ws.save()
    from_outcomes = deferred(webhook, deferral.REASON_402, until=ws.paused_until)
    from_guards = make_lead(
        3,
        webhook=webhook,
        state=S.DEFERRED,
        defer_reason=f"workspace paused: {ws.pause_reason}",
        next_attempt_at=ws.paused_until,
    )

    for lead in (from_outcomes, from_guards):
        d = deferral.explain(lead, now=NOW)
        assert d.kind == deferral.PAYMENT
        assert d.text == "paused by Clay's 402 (out of Clay credits) until 21:47:40 UTC (in 59 min 50 s)"


def test_an_operators_workspace_pause_gives_its_reason(webhook):
    ws = webhook.workspace
    ws.paused_until, ws.pause_reason = NOW + timedelta(hours=2), "maintenance at Clay"
    ws.save()
    lead = deferred(webhook, "workspace paused: maintenance at Clay", until=ws.paused_until)
    d = deferral.explain(lead, now=NOW)
    assert d.kind == deferral.PAUSED
    assert d.text == "workspace paused (maintenance at Clay) until 22:47:50 UTC (in 2 h)"


def test_backoff_says_which_retry_of_how_many_and_when(webhook, settings):
    settings.CLAYOPS_MAX_ATTEMPTS = 7
    lead = make_lead(
        4,
        webhook=webhook,
        state=S.RETRY_WAIT,
        attempt_count=3,
        error_class="server_error",
        next_attempt_at=NOW + timedelta(seconds=70),
    )
    d = deferral.explain(lead, now=NOW)
    assert d.kind == deferral.BACKOFF
    assert d.until == NOW + timedelta(seconds=70)
    assert d.text == "retry 3 of 6 (after a server error) at 20:49:00 UTC (in 1 min 10 s)"


def test_a_due_retry_says_the_next_tick_requeues_it(webhook):
    lead = make_lead(
        5,
        webhook=webhook,
        state=S.RETRY_WAIT,
        attempt_count=1,
        error_class="timeout",
        next_attempt_at=NOW - timedelta(seconds=1),
    )
    d = deferral.explain(lead, now=NOW)
    assert d.until is None
    assert d.text == "retry 1 of 4 (after a timeout): due now: requeued by the next maintenance tick"


def test_hourly_cap_says_when_the_next_hour_starts(webhook):
    ws = webhook.workspace
    ws.hourly_cap = 500
    ws.save()
    lead = deferred(webhook, deferral.REASON_HOURLY, until=datetime(2026, 11, 30, 21, 0, tzinfo=UTC))
    d = deferral.explain(lead, now=NOW)
    assert d.kind == deferral.HOURLY_CAP
    assert d.text == "hourly row cap reached (500 rows/h): resumes at 21:00:00 UTC (in 12 min 10 s)"


def test_a_full_webhook_with_nowhere_to_fail_over_says_so(webhook):
    webhook.is_full = True
    webhook.save()
    lead = deferred(webhook, deferral.REASON_NO_WEBHOOK)
    d = deferral.explain(lead, now=NOW)
    assert d.kind == deferral.NO_WEBHOOK and d.until is None
    assert (
        d.text == "lifetime row cap reached (people: 50,000 rows): no other webhook of acme has room: add one"
    )

    make_webhook(workspace=webhook.workspace, name="spare")  # somewhere to fail over now
    d = deferral.explain(lead, now=NOW)
    assert d.kind == deferral.CLEARED
    assert d.text.startswith("a webhook has room again: released by the next offline drain")


def test_a_cleared_cause_gives_way_to_what_blocks_the_lead_now(la_webhook):
    exhaust(la_webhook.workspace.budget)
    lead = deferred(la_webhook, "circuit open")  # the circuit closed since, but the budget ran out
    d = deferral.explain(lead, now=NOW)
    assert d.kind == deferral.BUDGET
    assert d.text.startswith("budget used up: resumes at 00:00 America/Los_Angeles")


def test_an_unknown_reason_is_shown_as_recorded(webhook):
    lead = deferred(webhook, "legacy: waiting for the v2 table", until=NOW + timedelta(seconds=90))
    d = deferral.explain(lead, now=NOW)
    assert d.kind == deferral.OTHER
    assert d.text == "legacy: waiting for the v2 table until 20:49:20 UTC (in 1 min 30 s)"
    assert deferral.explain(deferred(webhook, ""), now=NOW).text == "deferred (no reason recorded)"


def test_a_lead_that_is_not_waiting_has_no_deferral(webhook):
    assert deferral.explain(make_lead(6, webhook=webhook, state=S.ACCEPTED), now=NOW) is None


# --- in bulk ------------------------------------------------------------------------------------


def test_explain_many_reads_a_page_in_three_queries(la_webhook, webhook, django_assert_max_num_queries):
    exhaust(la_webhook.workspace.budget)
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state=CircuitBreaker.State.OPEN, opened_at=NOW - timedelta(seconds=10), cooldown_seconds=30
    )
    other = make_webhook(workspace=webhook.workspace, name="second")
    leads = (
        make_leads(20, webhook=la_webhook, state=S.DEFERRED, defer_reason=deferral.REASON_BUDGET)
        + make_leads(20, webhook=webhook, state=S.DEFERRED, defer_reason="circuit open")
        + make_leads(10, webhook=other, state=S.RETRY_WAIT, attempt_count=1, error_class="timeout")
        + make_leads(5, webhook=other, state=S.ACCEPTED)
    )
    page = list(Lead.objects.filter(pk__in=[lead.pk for lead in leads]))

    with django_assert_max_num_queries(3):
        found = deferral.explain_many(page, now=NOW)

    assert len(found) == 50  # the accepted ones are not waiting
    kinds = {lead.pk: found[lead.pk].kind for lead in page if lead.pk in found}
    assert sorted(set(kinds.values())) == [deferral.BACKOFF, deferral.BREAKER, deferral.BUDGET]
    for lead in page[:5]:  # the same answer as one by one
        if lead.pk in found:
            assert found[lead.pk] == deferral.explain(lead, now=NOW)


# --- the overview banner ------------------------------------------------------------------------


def test_banner_counts_the_leads_per_cause(la_webhook, settings, django_assert_max_num_queries):
    settings.CLAYOPS_MAX_ATTEMPTS = 5
    exhaust(la_webhook.workspace.budget)
    make_leads(12, webhook=la_webhook, state=S.DEFERRED, defer_reason=deferral.REASON_BUDGET)
    make_leads(2, webhook=la_webhook, state=S.SERVED_CACHE, defer_reason=deferral.REASON_BUDGET)
    make_leads(
        3,
        webhook=la_webhook,
        state=S.RETRY_WAIT,
        attempt_count=2,
        error_class="server_error",
        next_attempt_at=NOW + timedelta(seconds=45),
    )
    make_leads(4, webhook=la_webhook, state=S.ENRICHED)
    counts.refresh_due()  # the workers' background count (clayops.counts); a page never counts itself

    with django_assert_max_num_queries(3):  # the context: webhooks, usage, usable webhooks
        lines = deferral.banners([la_webhook.pk], now=NOW)[la_webhook.pk]

    assert [line.text for line in lines] == [
        "12 leads deferred: budget used up — resumes at 00:00 America/Los_Angeles (in 11 h 12 min)",
        "3 leads waiting to retry: retrying after a server error — next at 12:48:35 America/Los_Angeles"
        " (in 45 s)",
        "2 leads deferred (served from cache meanwhile): budget used up — resumes at 00:00"
        " America/Los_Angeles (in 11 h 12 min)",
    ]


def test_banner_merges_recorded_reasons_that_now_read_the_same(webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state=CircuitBreaker.State.OPEN, opened_at=NOW - timedelta(seconds=10), cooldown_seconds=30
    )
    make_leads(4, webhook=webhook, state=S.DEFERRED, defer_reason="circuit open")
    make_leads(3, webhook=webhook, state=S.DEFERRED, defer_reason="circuit half_open")
    lines = deferral.banners([webhook.pk], now=NOW)[webhook.pk]
    assert [line.text for line in lines] == [
        "7 leads deferred: circuit open — next probe at 20:48:10 UTC (in 20 s)"
    ]


def test_banner_version_ignores_a_ticking_countdown_but_not_a_new_cause(webhook):
    CircuitBreaker.objects.filter(webhook=webhook).update(
        state=CircuitBreaker.State.OPEN, opened_at=NOW - timedelta(seconds=10), cooldown_seconds=30
    )
    make_leads(2, webhook=webhook, state=S.DEFERRED, defer_reason="circuit open")
    first = deferral.banners_version(deferral.banners([webhook.pk], now=NOW, use_cache=False))
    later = deferral.banners_version(
        deferral.banners([webhook.pk], now=NOW + timedelta(seconds=3), use_cache=False)
    )
    assert first == later
    CircuitBreaker.objects.filter(webhook=webhook).update(state=CircuitBreaker.State.FORCED_OPEN)
    forced = deferral.banners_version(deferral.banners([webhook.pk], now=NOW, use_cache=False))
    assert forced != first


# --- DLQ drain estimate -------------------------------------------------------------------------


def test_drain_estimate_is_set_by_the_slower_of_the_drain_rate_and_the_workspace_limit(webhook):
    ws = webhook.workspace
    ws.rate_limit = 2.0
    ws.save()
    for i in range(30):
        make_dead_letter(i, webhook=webhook)

    slow = deferral.dlq_drain_estimate(drain_rate=10.0)
    assert slow.count == 30 and slow.seconds == 15.0 and slow.rate == 2.0
    assert slow.limited_by == "workspace acme's rate limit (2/s)"

    fast = deferral.dlq_drain_estimate(drain_rate=1.0)
    assert fast.seconds == 30.0 and fast.limited_by == "the drain rate (1/s)"

    none = deferral.dlq_drain_estimate(error_class="client_error", drain_rate=10.0)
    assert none.count == 0 and none.seconds is None and not none.under_a_second


# --- on the pages -------------------------------------------------------------------------------


@pytest.fixture
def exhausted(la_webhook):
    exhaust(la_webhook.workspace.budget, now=datetime.now(UTC))
    return make_leads(3, webhook=la_webhook, state=S.DEFERRED, defer_reason=deferral.REASON_BUDGET)


RESUMES = "budget used up: resumes at 00:00 America/Los_Angeles (in "


def test_leads_list_has_a_why_until_column(client, viewer, la_webhook, exhausted):
    make_lead(9, webhook=la_webhook, state=S.ENRICHED)
    client.force_login(viewer)
    html = client.get(reverse("dashboard:leads"), {"webhook": la_webhook.pk}).content.decode()
    assert "Why / until" in html
    text = re.sub(r"<[^>]+>", "", html)
    assert text.count(RESUMES) == 3


def test_lead_page_says_why_it_waits(client, viewer, exhausted):
    client.force_login(viewer)
    html = client.get(reverse("dashboard:lead_detail", args=[exhausted[0].pk])).content.decode()
    assert "Why it waits" in html and RESUMES in re.sub(r"<[^>]+>", "", html)


def test_overview_card_has_the_banner(client, viewer, la_webhook, exhausted):
    client.force_login(viewer)
    html = client.get(reverse("dashboard:overview")).content.decode()
    card = html[html.index(f'id="webhook-{la_webhook.pk}"') :]
    banner = card[card.index('data-testid="deferral-banner"') : card.index("</ul>")]
    text = " ".join(re.sub(r"<[^>]+>", "", banner).split())
    assert "3 leads deferred: budget used up — resumes at 00:00 America/Los_Angeles (in " in text
    # the card's budget section names the same reset, in the budget's zone (not the server's 08:00)
    budget = " ".join(re.sub(r"<[^>]+>", "", card[card.index('aria-label="Today') :]).split())
    assert "leads are deferred until the reset at 00:00 America/Los_Angeles." in budget


def test_a_card_an_action_returns_keeps_its_banner(client, operator, la_webhook, exhausted):
    client.force_login(operator)
    html = client.post(reverse("dashboard:offline_drain", args=[la_webhook.pk]), **HX).content.decode()
    # the drain makes them eligible; the budget is still used up, so they stay deferred and say why
    assert 'data-testid="deferral-banner"' in html and "budget used up" in html


def test_dlq_shows_why_a_retried_lead_waits_again(client, viewer, la_webhook):
    exhaust(la_webhook.workspace.budget, now=datetime.now(UTC))
    lead = make_lead(8, webhook=la_webhook, state=S.DEFERRED, defer_reason=deferral.REASON_BUDGET)
    entry = make_dead_letter(1, webhook=la_webhook, lead=lead, state="retrying")
    client.force_login(viewer)
    html = client.get(reverse("dashboard:dlq"), {"state": "retrying"}).content.decode()
    row = re.search(rf'id="dlq-row-{entry.pk}">(.*?)</tr>', html, re.S).group(1)
    assert "lead deferred: " in row and RESUMES in re.sub(r"<[^>]+>", "", row)
    detail = client.get(reverse("dashboard:dlq_entry", args=[entry.pk])).content.decode()
    assert RESUMES in re.sub(r"<[^>]+>", "", detail)


def test_drain_preview_uses_the_workspace_rate_limit(client, operator, webhook, settings):
    settings.CLAYOPS_DRAIN_RATE = 0.0  # the DLQ default, 10/s
    ws = webhook.workspace
    ws.rate_limit = 1.0
    ws.save()
    for i in range(90):
        make_dead_letter(i, webhook=webhook)
    client.force_login(operator)
    html = client.get(reverse("dashboard:dlq_drain_preview"), **HX).content.decode()
    assert "about <strong>1 min 30 s</strong>" in html
    assert "workspace acme&#x27;s rate limit (1/s)" in html and "<strong>1 leads/s</strong>" in html
