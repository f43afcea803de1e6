"""/metrics: Prometheus' text format with the figures of the database and Redis at scrape time,
behind a bearer token or an allowed network, with bounded labels and a bounded number of queries."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from clayops import health, metrics
from clayops.models import Attempt, CreditUsage, Lead, LeadImport
from clayops.settings import envnetworks
from tests.factories import (
    make_dead_letter,
    make_dead_letters,
    make_lead,
    make_lead_import,
    make_leads,
    make_user,
    make_webhook,
    make_workspace,
)

TOKEN = "metrics-token-0123456789abcdef"
URL = "/metrics"
S = Lead.State
Out = Attempt.Outcome


@pytest.fixture(autouse=True)
def _metrics_on(settings):
    settings.CLAYOPS_METRICS_TOKEN = TOKEN
    settings.CLAYOPS_METRICS_ALLOWED_NETWORKS = []
    metrics.reset()  # the database of the previous test was rolled back
    yield
    metrics.reset()


def parse(body: str) -> dict[str, dict[frozenset, float]]:
    samples: dict[str, dict[frozenset, float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def scrape() -> tuple[dict[str, dict[frozenset, float]], str]:
    response = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    body = response.content.decode()
    return parse(body), body


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][frozenset(labels.items())]


def attempts(lead: Lead, n: int = 1, **fields) -> list[Attempt]:
    fields.setdefault("outcome", Out.ACCEPTED)
    fields.setdefault("status_code", 200)
    fields.setdefault("latency_ms", 40.0)
    return Attempt.objects.bulk_create(Attempt(lead=lead, webhook=lead.webhook, **fields) for _ in range(n))


# --- Access ---------------------------------------------------------------------------------------


def test_it_is_off_until_a_token_or_a_network_is_configured(db, settings):
    settings.CLAYOPS_METRICS_TOKEN = ""
    response = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 403
    assert "CLAYOPS_METRICS_TOKEN" in response.json()["error"]


def test_it_requires_the_bearer_token(db):
    operator = make_user("otto", role="operators")
    logged_in = Client()
    logged_in.force_login(operator)
    for client, headers in [
        (Client(), {}),
        (Client(), {"HTTP_AUTHORIZATION": "Bearer wrong-token-0123456789"}),
        (Client(), {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"}),
        (Client(), {"HTTP_AUTHORIZATION": TOKEN}),
        (logged_in, {}),  # a dashboard login is not a token
    ]:
        response = client.get(URL, **headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "# TYPE" not in response.content.decode()
    assert Client().get(URL, HTTP_AUTHORIZATION=f"bearer  {TOKEN} ").status_code == 200
    assert Client().post(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


def test_it_admits_an_allowed_network_by_the_peer_address_only(db, settings):
    settings.CLAYOPS_METRICS_TOKEN = ""
    settings.CLAYOPS_METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "2001:db8::/32"]
    client = Client()
    assert client.get(URL, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get(URL, REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert client.get(URL, REMOTE_ADDR="2001:db8::7").status_code == 200
    refused = client.get(URL, REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="10.1.2.3")
    assert refused.status_code == 403  # X-Forwarded-For is written by the client: never trusted
    assert "address" in refused.json()["error"]
    assert client.get(URL, REMOTE_ADDR="").status_code == 403
    # With a token as well, either one admits; outside the networks the token is asked for.
    settings.CLAYOPS_METRICS_TOKEN = TOKEN
    assert client.get(URL, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get(URL, REMOTE_ADDR="203.0.113.9").status_code == 401
    assert client.get(URL, REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_it_refuses_bad_settings_at_start_up(monkeypatch, tmp_path):
    monkeypatch.setenv("X_NETS", "10.0.0.0/8, 192.168.1.7")
    assert envnetworks("X_NETS") == ["10.0.0.0/8", "192.168.1.7"]
    monkeypatch.setenv("X_NETS", "10.0.0.0/8,intranet")
    with pytest.raises(ImproperlyConfigured, match="X_NETS: 'intranet' is not a network"):
        envnetworks("X_NETS")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAYOPS_METRICS")}
    env.update(CLAYOPS_VAR_DIR=str(tmp_path), CLAYOPS_METRICS_TOKEN="short")
    result = subprocess.run(
        [sys.executable, "-c", "import clayops.settings"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "CLAYOPS_METRICS_TOKEN must be at least 16" in result.stderr


# --- Figures --------------------------------------------------------------------------------------


def test_it_reports_each_breaker_state_convoy_style(workspace):
    now = timezone.now()
    hooks = {
        "closed": make_webhook(workspace=workspace, name="a"),
        "half_open": make_webhook(workspace=workspace, name="b", breaker={"state": "half_open"}),
        "open": make_webhook(workspace=workspace, name="c", breaker={"state": "open", "opened_at": now}),
        "forced_open": make_webhook(
            workspace=workspace, name="d", breaker={"state": "forced_open", "opened_at": now}
        ),
        "no row yet": make_webhook(workspace=workspace, name="e", breaker=False),
    }
    samples, _ = scrape()
    expected = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 2, "no row yet": 0}
    for state, hook in hooks.items():
        got = value(
            samples, "clayops_circuit_breaker_state", webhook=str(hook.pk), workspace=str(workspace.pk)
        )
        assert got == expected[state], state
    info = value(
        samples,
        "clayops_webhook_info",
        webhook=str(hooks["open"].pk),
        workspace=str(workspace.pk),
        webhook_name="c",
        workspace_name="acme",
    )
    assert info == 1


def test_it_reports_health_rows_and_pauses(webhook):
    for ok in (True, True, True, False):
        health.record(webhook.pk, ok=ok, latency_ms=50)
    type(webhook).objects.filter(pk=webhook.pk).update(
        rows_sent=120, row_cap=500, paused_until=timezone.now() + timedelta(minutes=1)
    )
    samples, _ = scrape()
    hook = str(webhook.pk)
    assert value(samples, "clayops_webhook_health_success_ratio", webhook=hook) == 0.75
    assert value(samples, "clayops_webhook_health_answers", webhook=hook) == 4
    assert value(samples, "clayops_webhook_rows_sent", webhook=hook) == 120
    assert value(samples, "clayops_webhook_row_cap", webhook=hook) == 500
    assert value(samples, "clayops_webhook_paused", webhook=hook) == 1
    assert value(samples, "clayops_workspace_paused", workspace=str(webhook.workspace_id)) == 0


def test_it_counts_leads_by_webhook_and_state(webhook):
    make_leads(3, webhook=webhook, state=S.QUEUED)
    make_leads(2, webhook=webhook, state=S.DEFERRED)
    make_lead(webhook=webhook, state=S.ENRICHED)
    make_lead(state=S.QUEUED)  # no webhook chosen yet
    samples, _ = scrape()
    hook = str(webhook.pk)
    assert value(samples, "clayops_leads", webhook=hook, state="queued") == 3
    assert value(samples, "clayops_leads", webhook=hook, state="deferred") == 2
    assert value(samples, "clayops_leads", webhook=hook, state="enriched") == 1
    assert value(samples, "clayops_leads", webhook=hook, state="dead") == 0  # every state, zeros too
    assert value(samples, "clayops_leads", webhook="none", state="queued") == 1
    assert sum(samples["clayops_leads"].values()) == 7


def test_it_reports_the_age_of_the_oldest_waiting_lead(webhook):
    now = timezone.now()
    make_lead(webhook=webhook, state=S.QUEUED, state_changed_at=now - timedelta(seconds=120))
    make_lead(webhook=webhook, state=S.QUEUED, state_changed_at=now - timedelta(seconds=10))
    make_lead(webhook=webhook, state=S.RETRY_WAIT, state_changed_at=now - timedelta(seconds=30))
    make_lead(webhook=webhook, state=S.ENRICHED, state_changed_at=now - timedelta(days=3))  # not waiting
    samples, _ = scrape()
    assert 120 <= value(samples, "clayops_oldest_pending_lead_age_seconds", state="queued") < 130
    assert 30 <= value(samples, "clayops_oldest_pending_lead_age_seconds", state="retry_wait") < 40
    assert value(samples, "clayops_oldest_pending_lead_age_seconds", state="deferred") == 0


def test_it_counts_dlq_entries_by_state_and_class(webhook):
    make_dead_letters(2, webhook=webhook)
    make_dead_letter(5, webhook=webhook, error_class="client_error", error="HTTP 400")
    make_dead_letter(6, webhook=webhook, state="resolved")
    samples, _ = scrape()
    assert value(samples, "clayops_dlq_entries", state="pending", error_class="server_error") == 2
    assert value(samples, "clayops_dlq_entries", state="pending", error_class="client_error") == 1
    assert value(samples, "clayops_dlq_entries", state="resolved", error_class="server_error") == 1


def test_it_reports_todays_budget_in_the_budgets_own_day(budget, webhook):
    today = budget.day_for()
    CreditUsage.objects.create(budget=budget, day=today, spent=Decimal("12.50"), reserved=Decimal("6"))
    CreditUsage.objects.create(budget=budget, day=today - timedelta(days=1), spent=Decimal("999"))
    samples, _ = scrape()
    pk = str(budget.pk)
    assert value(samples, "clayops_budget_limit_credits", budget=pk) == 1000
    assert value(samples, "clayops_budget_spent_credits", budget=pk) == 12.5
    assert value(samples, "clayops_budget_reserved_credits", budget=pk) == 6
    assert value(samples, "clayops_budget_info", budget=pk, budget_name="test", timezone="UTC") == 1


def test_it_reports_a_budget_with_no_usage_today_as_nothing_spent(budget):
    samples, _ = scrape()
    assert value(samples, "clayops_budget_spent_credits", budget=str(budget.pk)) == 0
    assert value(samples, "clayops_budget_reserved_credits", budget=str(budget.pk)) == 0
    assert not CreditUsage.objects.exists()  # a scrape creates nothing


def test_it_counts_sends_429s_and_latency_from_the_attempts(webhook):
    lead = make_lead(0, webhook=webhook, state=S.ACCEPTED)
    attempts(lead, latency_ms=40)
    attempts(lead, latency_ms=300)
    attempts(lead, latency_ms=2000)
    attempts(lead, 2, outcome=Out.RATE_LIMITED, status_code=429, error_class="rate_limited", latency_ms=10)
    attempts(lead, outcome=Out.RETRY, status_code=503, error_class="server_error", latency_ms=20_000)
    samples, _ = scrape()
    hook = str(webhook.pk)
    sends = "clayops_sends_total"
    assert value(samples, sends, webhook=hook, outcome="accepted", error_class="none") == 3
    assert value(samples, sends, webhook=hook, outcome="rate_limited", error_class="rate_limited") == 2
    assert value(samples, sends, webhook=hook, outcome="retry", error_class="server_error") == 1
    assert value(samples, "clayops_rate_limited_total", webhook=hook) == 2
    buckets = {
        dict(labels)["le"]: n
        for labels, n in samples["clayops_send_latency_seconds_bucket"].items()
        if dict(labels)["webhook"] == hook
    }
    ordered = sorted(buckets.items(), key=lambda item: float(item[0]))
    counts = [n for _, n in ordered]
    assert counts == sorted(counts), "buckets are cumulative"
    assert ordered[-1] == ("+Inf", 6)
    assert buckets["0.05"] == 3 and buckets["0.5"] == 4 and buckets["2.5"] == 5 and buckets["15.0"] == 5
    assert value(samples, "clayops_send_latency_seconds_count", webhook=hook) == Attempt.objects.count()
    assert value(samples, "clayops_send_latency_seconds_sum", webhook=hook) == pytest.approx(
        0.04 + 0.3 + 2 + 2 * 0.01 + 20
    )


def test_it_folds_old_attempts_into_totals_and_counts_each_once(webhook):
    lead = make_lead(0, webhook=webhook, state=S.ACCEPTED)
    now = timezone.now()
    old = attempts(lead, 2, started_at=now - timedelta(hours=1))
    attempts(lead, started_at=now - timedelta(seconds=5))
    key = (webhook.pk, "accepted", "none")
    assert metrics.attempt_totals([webhook.pk], now=now)[key][metrics.SENDS] == 3
    # Later scrapes: the recent attempt is folded once it is old enough, never twice.
    for later in (now + timedelta(hours=1), now + timedelta(hours=2)):
        assert metrics.attempt_totals([webhook.pk], now=later)[key][metrics.SENDS] == 3
    # Folded attempts stay counted when their rows go (a counter does not go down) ...
    Attempt.objects.filter(pk__in=[a.pk for a in old]).delete()
    samples, _ = scrape()
    assert (
        value(samples, "clayops_sends_total", webhook=str(webhook.pk), outcome="accepted", error_class="none")
        == 3
    )
    # ... in every process: the fold is in the shared cache, and each process keeps its own copy
    # for when the cache is unreachable.
    metrics.reset()
    assert metrics.attempt_totals([webhook.pk], now=now)[key][metrics.SENDS] == 3
    cache.clear()
    assert metrics.attempt_totals([webhook.pk], now=now)[key][metrics.SENDS] == 3
    # Both lost: counted again from the rows that are left.
    cache.clear()
    metrics.reset()
    assert metrics.attempt_totals([webhook.pk], now=now)[key][metrics.SENDS] == 1
    # A fold it cannot read (another release's buckets, anything else) is rebuilt, not trusted.
    for stored in ({"until": now, "buckets": (1.0,), "rows": {key: [99.0]}}, "garbage"):
        cache.set(metrics.FOLD_KEY, stored, None)
        metrics.reset()
        assert metrics.attempt_totals([webhook.pk], now=now)[key][metrics.SENDS] == 1


def test_it_counts_imports_and_their_rows(db):
    make_lead_import(valid_rows=10, invalid_rows=1, duplicate_rows=2)
    make_lead_import(valid_rows=5, invalid_rows=0, duplicate_rows=1, state=LeadImport.State.RUNNING)
    samples, _ = scrape()
    assert value(samples, "clayops_imports", state="done") == 1
    assert value(samples, "clayops_imports", state="running") == 1
    assert value(samples, "clayops_imports", state="failed") == 0
    assert value(samples, "clayops_import_rows_total", result="valid") == 15
    assert value(samples, "clayops_import_rows_total", result="invalid") == 1
    assert value(samples, "clayops_import_rows_total", result="duplicate") == 3


def test_it_reads_rq_queue_lengths_and_survives_redis_being_down(db, monkeypatch):
    import django_rq
    from rq import Queue

    Queue("submit", connection=django_rq.get_connection("submit")).enqueue("clayops.jobs.submit_leads", [1])
    samples, _ = scrape()
    assert value(samples, "clayops_queue_jobs", queue="submit", status="queued") == 1
    assert value(samples, "clayops_queue_jobs", queue="default", status="failed") == 0
    assert value(samples, "clayops_redis_up") == 1
    dead = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.5)
    monkeypatch.setattr("clayops.ratelimit.redis_connection", lambda: dead)
    samples, _ = scrape()
    assert value(samples, "clayops_redis_up") == 0
    assert "clayops_queue_jobs" not in samples


# --- Conventions and cost -------------------------------------------------------------------------


ALLOWED_LABELS = {
    "webhook",
    "workspace",
    "budget",
    "state",
    "outcome",
    "error_class",
    "result",
    "queue",
    "status",
    "le",
    "webhook_name",
    "workspace_name",
    "budget_name",
    "timezone",
}


def busy_world(n_webhooks: int) -> None:
    """Webhooks with leads in several states, attempts, DLQ entries, usage and imports."""
    workspace = make_workspace(name=f"ws{n_webhooks}")
    for i in range(n_webhooks):
        hook = make_webhook(workspace=workspace, name=f"h{i}")
        leads = make_leads(4, webhook=hook, state=S.QUEUED)
        make_lead(webhook=hook, state=S.DEFERRED)
        attempts(leads[0], 3)
        attempts(leads[1], outcome=Out.RATE_LIMITED, error_class="rate_limited", status_code=429)
        make_dead_letter(100 + i, webhook=hook)
        health.record(hook.pk, ok=True, latency_ms=30)
    CreditUsage.objects.create(budget=workspace.budget, day=workspace.budget.day_for(), spent=Decimal("3"))
    make_lead_import(valid_rows=4)


def test_its_labels_are_bounded_and_carry_no_lead_data(webhook):
    busy_world(2)
    lead = make_lead(7, webhook=webhook, state=S.DEAD)
    make_dead_letter(lead=lead, webhook=webhook)
    _, body = scrape()
    for text in (lead.email, lead.domain, lead.company, "p0@acme0.com", "d100@x.com", "tok-123"):
        assert text not in body
    labels = set()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels |= set(sample.labels)
            assert str(lead.pk) not in sample.labels.values() or sample.labels.keys() <= {
                "webhook",
                "workspace",
            }
    assert labels <= ALLOWED_LABELS


def test_its_names_follow_prometheus_conventions(webhook):
    busy_world(1)
    _, body = scrape()
    families = list(text_string_to_metric_families(body))
    assert families and all(f.name.startswith("clayops_") for f in families)
    for family in families:
        names = {sample.name for sample in family.samples}
        if family.type == "counter":
            assert names == {family.name + "_total"}, family.name
        elif family.type == "gauge":
            assert not family.name.endswith("_total"), family.name
        elif family.type == "histogram":
            assert family.name.endswith("_seconds")
    assert "# TYPE clayops_send_latency_seconds histogram" in body
    assert "# TYPE clayops_sends_total counter" in body


def scrape_queries() -> int:
    cache.clear()  # the worst case: nothing cached, no fold yet
    metrics.reset()
    with CaptureQueriesContext(connection) as queries:
        scrape()
    return len(queries)


def test_its_number_of_queries_does_not_grow_with_webhooks_or_leads(db):
    busy_world(1)
    few = scrape_queries()
    busy_world(6)
    many = scrape_queries()
    assert few == many <= 13, (few, many)  # 4 of them: the background count, made here once
    # Cached counts and the fold make a second scrape a little cheaper, never dearer.
    with CaptureQueriesContext(connection) as again:
        scrape()
    assert len(again) <= many


def test_it_counts_rate_limit_waits_per_workspace_and_reports_tick_age_and_workers(workspace):
    from clayops import liveness, ratelimit

    conn = ratelimit.redis_connection()
    conn.delete(ratelimit.WAITS_KEY, liveness.LAST_TICK_KEY)
    # A burst of 1 at 20/s: the second take waits about 50 ms for its token.
    for _ in range(2):
        assert ratelimit.acquire_blocking(workspace.pk, rate=20, burst=1, max_wait=5)
    samples, text = scrape()
    assert value(samples, "clayops_rate_limit_waits_total", workspace=str(workspace.pk)) == 1
    waited = value(samples, "clayops_rate_limit_wait_seconds_total", workspace=str(workspace.pk))
    assert 0.01 < waited < 2
    assert "clayops_maintenance_tick_age_seconds" not in samples  # no tick on record yet
    assert value(samples, "clayops_rq_workers") == 0
    liveness.record_tick()
    samples, _ = scrape()
    assert 0 <= value(samples, "clayops_maintenance_tick_age_seconds") < 30
