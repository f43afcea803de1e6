"""Prometheus metrics, read from the database and Redis at scrape time.

Nothing is counted in process memory: every value comes from the system of record (or Redis, for
the queues) when Prometheus scrapes, so any number of web processes and RQ workers report the same
figures and no multiprocess directory is needed. A scrape is a fixed number of aggregate queries
(GROUP BY, index seeks), never one per lead, webhook or row:

- webhooks with their breaker and workspace; budgets; today's usage rows; health samples of the
  window (unique index webhook, minute);
- leads by (webhook, state), with or without a webhook: the background count of clayops.counts
  (the overview's too), read with one cache GET;
- the oldest queued / deferred / retry_wait lead: one `ORDER BY state_changed_at LIMIT 1` seek per
  state on the `lead_state_changed` index;
- DLQ entries by (state, error class): the background count as well;
- imports by state with their row sums (one row per upload);
- attempts (sends, outcomes, latency histogram): see `attempt_totals`. Attempts are kept for ever
  (nothing prunes them), but the table grows with every send, so a scrape only reads the attempts
  of the last few minutes; the older ones are folded into running totals kept in the cache;
- RQ queue lengths and registries (one Redis pipeline).

Labels are bounded: webhook, workspace and budget ids (the primary key as a string), lead and DLQ
states, outcomes, error classes, queue names. Never a lead's id, email or any row data. Names are
joined to ids by the `*_info` series.
"""

from __future__ import annotations

import threading
import time
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db.models import BooleanField, Case, Count, Q, Sum, Value, When
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from redis.exceptions import RedisError

from . import health, selectors
from .counts import snapshot as background_counts
from .models import (
    Attempt,
    CircuitBreaker,
    CreditBudget,
    CreditUsage,
    Lead,
    LeadImport,
    Webhook,
)
from .retry import ErrorClass

PREFIX = "clayops_"
NO_WEBHOOK = "none"
NO_CLASS = "none"

B = CircuitBreaker.State
# Convoy's circuit_breaker_state: 0 closed, 1 half-open, 2 open. Forced open (an operator's pause)
# admits nothing either: 2. An open breaker whose cooldown has passed stays 2 until its probe goes.
BREAKER_VALUES = {B.CLOSED: 0, B.HALF_OPEN: 1, B.OPEN: 2, B.FORCED_OPEN: 2}
# The backlog: leads waiting to be sent. Their age is the time since they entered the state.
PENDING_STATES = (Lead.State.QUEUED, Lead.State.DEFERRED, Lead.State.RETRY_WAIT)
# Latency buckets, seconds: Clay's webhook answers in tens of milliseconds to a few seconds; the
# read timeout is 15 s by default.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
QUEUE_STATUSES = ("queued", "started", "scheduled", "failed")


# --- Attempts: counters and the latency histogram -------------------------------------------------

AttemptKey = tuple[int, str, str]  # webhook id, outcome, error class
FOLD_KEY = "clayops:metrics:attempts:v1"
# Columns of a totals vector: sends, sends with a latency, latency sum (ms), then one per bucket.
SENDS, TIMED, LATENCY_MS, FIRST_BUCKET = 0, 1, 2, 3


def fold_lag() -> timedelta:
    """How old an attempt's start must be before it is folded into the running totals.

    An Attempt row is written when its answer is applied, after the request started (connect and
    read timeouts at most, plus the job's own pace; a job launches nothing later than half the
    stuck-lead limit). Five minutes, or more when the timeouts are longer, leaves room for a slow
    commit too, so no attempt can appear with a start older than what was already folded.
    """
    longest = (
        settings.CLAYOPS_HTTP_CONNECT_TIMEOUT
        + settings.CLAYOPS_HTTP_READ_TIMEOUT
        + settings.CLAYOPS_STUCK_SUBMITTING_SECONDS
    )
    return timedelta(seconds=max(300.0, 2 * longest))


@dataclass
class Fold:
    """Totals of every attempt that started before `until`, per (webhook, outcome, error class)."""

    until: datetime | None = None
    rows: dict[AttemptKey, list[float]] = field(default_factory=dict)


_last_fold: list[Fold] = []  # this process' newest fold, for when the cache is unreachable
_fold_lock = threading.Lock()


def reset() -> None:
    """Forget this process' copy of the folded totals (tests: the database was rolled back)."""
    with _fold_lock:
        _last_fold.clear()


def _load_fold() -> Fold:
    """The newest of the cache's fold (shared by every process) and this process' own.

    The cache holds plain data (a datetime and a dict of lists), never a pickled class of this
    module; a fold made with other latency buckets (an older release) is ignored and rebuilt."""
    candidates = list(_last_fold)
    stored = cache.get(FOLD_KEY)
    if (
        isinstance(stored, dict)
        and isinstance(stored.get("until"), datetime)
        and stored.get("buckets") == LATENCY_BUCKETS
    ):
        candidates.append(Fold(stored["until"], dict(stored.get("rows") or {})))
    if not candidates:
        return Fold()
    newest = max(candidates, key=lambda f: f.until.timestamp() if f.until else 0.0)
    return Fold(newest.until, {key: list(values) for key, values in newest.rows.items()})


def _store_fold(fold: Fold) -> None:
    # No expiry: losing it costs one full count of the table, never a wrong figure.
    cache.set(FOLD_KEY, {"until": fold.until, "buckets": LATENCY_BUCKETS, "rows": fold.rows}, None)
    with _fold_lock:
        _last_fold[:] = [fold]


def _add(into: dict[AttemptKey, list[float]], key: AttemptKey, values: list[float]) -> None:
    row = into.setdefault(key, [0.0] * (FIRST_BUCKET + len(LATENCY_BUCKETS)))
    for i, value in enumerate(values):
        row[i] += value


def attempt_totals(webhook_ids: list[int], *, now: datetime) -> dict[AttemptKey, list[float]]:
    """Totals per (webhook, outcome, error class) of every attempt of these webhooks: counts, the
    latency sum and the latency histogram's cumulative bucket counts.

    One query: the attempts that started since the fold's `until` (an index range on
    `attempt_webhook_started` per webhook), grouped by whether they started before the new cutoff
    (now - fold_lag()). Those are added to the fold, which is stored back; the others only count
    in this scrape. Two processes folding at once each store a consistent fold (totals of every
    attempt before their own cutoff), so the last writer wins and nothing is counted twice. With
    no fold (the first scrape, a flushed cache) every attempt is counted once, then folded.

    Counts survive the deletion of old attempts (a lead deleted by an operator) as long as the fold
    lives; a fold rebuilt from the table counts the attempts that are left, and Prometheus reads
    the drop as a counter reset.
    """
    ids = list(webhook_ids)
    fold = _load_fold()
    cutoff = now - fold_lag()
    if fold.until is not None and fold.until > cutoff:
        cutoff = fold.until  # a clock step back: fold nothing new
    known = set(ids)  # a deleted webhook's totals go with it
    base = {key: values for key, values in fold.rows.items() if key[0] in known}
    live: dict[AttemptKey, list[float]] = {}
    if ids:
        attempts = Attempt.objects.filter(webhook_id__in=ids)
        if fold.until is not None:
            attempts = attempts.filter(started_at__gte=fold.until)
        aggregates: dict[str, Any] = {
            "sends": Count("pk"),
            "timed": Count("latency_ms"),
            "latency": Sum("latency_ms"),
        }
        for i, bound in enumerate(LATENCY_BUCKETS):
            aggregates[f"le{i}"] = Count("pk", filter=Q(latency_ms__lte=bound * 1000))
        rows = (
            attempts.order_by()
            .annotate(
                settled=Case(
                    When(started_at__lt=cutoff, then=Value(True)),
                    default=Value(False),
                    output_field=BooleanField(),
                )
            )
            .values("webhook_id", "outcome", "error_class", "settled")
            .annotate(**aggregates)
        )
        for row in cast(Iterable[dict[str, Any]], rows):  # the stubs cannot see the ** aggregates
            key = (row["webhook_id"], row["outcome"] or "unknown", row["error_class"] or NO_CLASS)
            values = [float(row["sends"]), float(row["timed"]), float(row["latency"] or 0.0)]
            values += [float(row[f"le{i}"]) for i in range(len(LATENCY_BUCKETS))]
            _add(base if row["settled"] else live, key, values)
    _store_fold(Fold(cutoff, base))
    totals: dict[AttemptKey, list[float]] = {}
    for source in (base, live):
        for key, values in source.items():
            _add(totals, key, values)
    return totals


# --- The other figures ------------------------------------------------------------------------------


def _unrouted_leads() -> dict[str, int]:
    """Leads with no webhook (not routed yet, or their webhook was deleted), by state: from the
    background count (clayops.counts)."""
    return dict(background_counts()["depths"].get(None, {}))


def _dlq_counts() -> list[tuple[str, str, int]]:
    """DLQ entries by (state, error class), from the background count (clayops.counts)."""
    per: dict[tuple[str, str], int] = {}
    for state, error_class, _, n in background_counts()["dlq"]:
        key = (state, error_class or NO_CLASS)
        per[key] = per.get(key, 0) + n
    return [(state, error_class, n) for (state, error_class), n in sorted(per.items())]


def _oldest_pending(now: datetime) -> dict[str, float]:
    ages = {}
    for state in PENDING_STATES:
        oldest = (
            Lead.objects.filter(state=state)
            .order_by("state_changed_at")
            .values_list("state_changed_at", flat=True)
            .first()
        )
        ages[str(state)] = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
    return ages


def _queue_jobs() -> dict[tuple[str, str], int] | None:
    """Jobs per (queue, status) from RQ's keys, in one pipeline; None when Redis does not answer.

    Read without RQ's registry cleanup (a scrape writes nothing): a started job whose worker died
    counts until a worker or the dashboard cleans the registry up.
    """
    from rq.queue import Queue
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    from .ratelimit import redis_connection

    try:
        connection = redis_connection()
        pipe = connection.pipeline(transaction=False)
        names = list(settings.RQ_QUEUES)
        for name in names:
            pipe.llen(Queue(name, connection=connection).key)
            for registry in (StartedJobRegistry, ScheduledJobRegistry, FailedJobRegistry):
                pipe.zcard(registry(name, connection=connection).key)
        answers = pipe.execute()
    except (RedisError, OSError):
        return None
    jobs = {}
    for i, name in enumerate(names):
        for j, status in enumerate(QUEUE_STATUSES):
            jobs[(name, status)] = int(answers[i * len(QUEUE_STATUSES) + j])
    return jobs


def _credits(value: Decimal | None) -> float:
    return float(value or 0)


# --- The collector --------------------------------------------------------------------------------


def gauge(name: str, doc: str, labels: Iterable[str] = (), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels), unit=unit)


class ClayopsCollector(Collector):
    """Builds every family at scrape time (see the module's docstring)."""

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        now = timezone.now()
        hooks = list(
            Webhook.objects.order_by("priority", "pk").values_list(
                "pk",
                "name",
                "workspace_id",
                "workspace__name",
                "workspace__paused_until",
                "breaker__state",
                "rows_sent",
                "row_cap",
                "paused_until",
            )
        )
        ids = [hook[0] for hook in hooks]
        yield from self._webhooks(hooks, now=now)
        yield from self._leads(ids, now=now)
        yield from self._attempts(ids, now=now)
        yield from self._budgets(now=now)
        yield from self._dlq_and_imports()
        yield from self._queues({hook[2] for hook in hooks if hook[2] is not None})
        duration = gauge("scrape_duration_seconds", "Time this scrape took to read every figure.")
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _webhooks(self, hooks: list[tuple], *, now: datetime) -> Iterator[Metric]:
        info = InfoMetricFamily(
            PREFIX + "webhook",
            "Names of each webhook and its workspace (join on the webhook label).",
            labels=["webhook", "workspace"],
        )
        state = gauge(
            "circuit_breaker_state",
            "Circuit breaker of the webhook: 0 closed, 1 half-open, 2 open (or forced open by an operator).",
            ["webhook", "workspace"],
        )
        ratio = gauge(
            "webhook_health_success_ratio",
            f"Share of Clay's answers that were successes over the last {health.WINDOW_SECONDS} s "
            "(1 without traffic).",
            ["webhook"],
        )
        answers = gauge(
            "webhook_health_answers",
            f"Answers from Clay counted by the health score over the last {health.WINDOW_SECONDS} s.",
            ["webhook"],
        )
        rows_sent = gauge("webhook_rows_sent", "Rows sent to the webhook in its lifetime.", ["webhook"])
        row_cap = gauge(
            "webhook_row_cap", "Rows the webhook accepts in its lifetime (Clay: 50,000).", ["webhook"]
        )
        paused = gauge(
            "webhook_paused", "1 while the webhook is paused by Clay's 429 Retry-After.", ["webhook"]
        )
        ws_paused = gauge(
            "workspace_paused", "1 while the workspace is paused (Clay's 402, or an operator).", ["workspace"]
        )
        reports = health.reports([hook[0] for hook in hooks], now=now)
        workspaces: dict[str, bool] = {}
        for pk, name, ws_id, ws_name, ws_until, breaker_state, sent, cap, until in hooks:
            webhook, workspace = str(pk), str(ws_id)
            info.add_metric([webhook, workspace], {"webhook_name": name, "workspace_name": ws_name})
            state.add_metric([webhook, workspace], BREAKER_VALUES.get(breaker_state or B.CLOSED, 2))
            report = reports[pk]
            ratio.add_metric([webhook], report.score / 100.0)
            answers.add_metric([webhook], report.successes + report.failures)
            rows_sent.add_metric([webhook], sent)
            row_cap.add_metric([webhook], cap)
            paused.add_metric([webhook], 1 if until and until > now else 0)
            workspaces[workspace] = bool(ws_until and ws_until > now)
        for workspace, is_paused in workspaces.items():
            ws_paused.add_metric([workspace], 1 if is_paused else 0)
        yield from (info, state, ratio, answers, rows_sent, row_cap, paused, ws_paused)

    def _leads(self, ids: list[int], *, now: datetime) -> Iterator[Metric]:
        leads = gauge(
            "leads",
            'Leads by webhook and state (webhook "none": no webhook chosen yet).',
            ["webhook", "state"],
        )
        depths = selectors.queue_depths(webhook_ids=ids)
        for pk in ids:
            counts = depths.get(pk, {})
            for state in Lead.State.values:
                leads.add_metric([str(pk), state], counts.get(state, 0))
        unrouted = _unrouted_leads()
        if unrouted:
            for state in Lead.State.values:
                leads.add_metric([NO_WEBHOOK, state], unrouted.get(state, 0))
        oldest = gauge(
            "oldest_pending_lead_age_seconds",
            "Age of the oldest lead waiting in the state (time since it entered it; 0 when none waits).",
            ["state"],
        )
        for state, age in _oldest_pending(now).items():
            oldest.add_metric([state], age)
        yield from (leads, oldest)

    def _attempts(self, ids: list[int], *, now: datetime) -> Iterator[Metric]:
        totals = attempt_totals(ids, now=now)
        sends = CounterMetricFamily(
            PREFIX + "sends",
            "Rows sent to Clay (one per lead per request), by outcome and error class.",
            labels=["webhook", "outcome", "error_class"],
        )
        limited = CounterMetricFamily(
            PREFIX + "rate_limited",
            "Rows Clay answered with 429 Too Many Requests.",
            labels=["webhook"],
        )
        latency = HistogramMetricFamily(
            PREFIX + "send_latency_seconds",
            "Time from sending a row to Clay's answer (a batch request counts once per row).",
            labels=["webhook"],
        )
        per_hook: dict[int, list[float]] = {pk: [0.0] * (FIRST_BUCKET + len(LATENCY_BUCKETS)) for pk in ids}
        rate_limited = dict.fromkeys(ids, 0.0)
        for (pk, outcome, error_class), values in sorted(totals.items()):
            sends.add_metric([str(pk), outcome, error_class], values[SENDS])
            if error_class == ErrorClass.RATE_LIMITED:
                rate_limited[pk] += values[SENDS]
            for i, value in enumerate(values):
                per_hook[pk][i] += value
        for pk in ids:
            limited.add_metric([str(pk)], rate_limited[pk])
            values = per_hook[pk]
            buckets = [
                (floatToGoString(bound), values[FIRST_BUCKET + i]) for i, bound in enumerate(LATENCY_BUCKETS)
            ]
            buckets.append(("+Inf", values[TIMED]))
            latency.add_metric([str(pk)], buckets, values[LATENCY_MS] / 1000.0)
        yield from (sends, limited, latency)

    def _budgets(self, *, now: datetime) -> Iterator[Metric]:
        info = InfoMetricFamily(
            PREFIX + "budget", "Name and day time zone of each credit budget.", labels=["budget"]
        )
        limit = gauge("budget_limit_credits", "Daily credit limit of the budget.", ["budget"])
        spent = gauge("budget_spent_credits", "Credits spent today (the budget's own day).", ["budget"])
        reserved = gauge(
            "budget_reserved_credits",
            "Credits held today for rows in flight (the budget's own day).",
            ["budget"],
        )
        actions_limit = gauge(
            "budget_actions_limit",
            "Daily Clay Actions limit of the budget (budgets with one).",
            ["budget"],
        )
        actions_used = gauge(
            "budget_actions", "Clay Actions today: used (spent) or held (reserved).", ["budget", "state"]
        )
        budgets = list(
            CreditBudget.objects.order_by("pk").values_list(
                "pk", "name", "daily_limit", "timezone", "actions_daily_limit"
            )
        )
        days = {pk: now.astimezone(zoneinfo.ZoneInfo(tz)).date() for pk, _, _, tz, _ in budgets}
        usage = {
            (budget_id, day): rest
            for budget_id, day, *rest in CreditUsage.objects.filter(
                budget_id__in=list(days), day__in=set(days.values())
            ).values_list("budget_id", "day", "spent", "reserved", "actions_spent", "actions_reserved")
        }
        for pk, name, daily_limit, tz, daily_actions in budgets:
            today_spent, today_reserved, today_actions, held_actions = usage.get(
                (pk, days[pk]), (None, None, 0, 0)
            )
            info.add_metric([str(pk)], {"budget_name": name, "timezone": tz})
            limit.add_metric([str(pk)], _credits(daily_limit))
            spent.add_metric([str(pk)], _credits(today_spent))
            reserved.add_metric([str(pk)], _credits(today_reserved))
            if daily_actions is not None:
                actions_limit.add_metric([str(pk)], daily_actions)
            actions_used.add_metric([str(pk), "spent"], today_actions)
            actions_used.add_metric([str(pk), "reserved"], held_actions)
        yield from (info, limit, spent, reserved, actions_limit, actions_used)

    def _dlq_and_imports(self) -> Iterator[Metric]:
        dlq = gauge(
            "dlq_entries", "Dead letter queue entries by state and error class.", ["state", "error_class"]
        )
        for state, error_class, n in _dlq_counts():
            dlq.add_metric([state, error_class], n)
        imports = gauge("imports", "CSV imports by state.", ["state"])
        rows = CounterMetricFamily(
            PREFIX + "import_rows",
            "Rows of every import: valid (became leads), invalid, duplicate (of a lead already there).",
            labels=["result"],
        )
        by_state = {
            state: (n, valid or 0, invalid or 0, duplicate or 0)
            for state, n, valid, invalid, duplicate in LeadImport.objects.order_by()
            .values_list("state")
            .annotate(
                n=Count("*"),
                valid=Sum("valid_rows"),
                invalid=Sum("invalid_rows"),
                duplicate=Sum("duplicate_rows"),
            )
            .values_list("state", "n", "valid", "invalid", "duplicate")
        }
        for state in LeadImport.State.values:
            imports.add_metric([state], by_state.get(state, (0,))[0])
        for i, result in enumerate(("valid", "invalid", "duplicate"), start=1):
            rows.add_metric([result], sum(values[i] for values in by_state.values()))
        yield from (dlq, imports, rows)

    def _queues(self, workspaces: set[int]) -> Iterator[Metric]:
        up = gauge("redis_up", "1 when the scrape could read RQ's queues from Redis.")
        jobs = _queue_jobs()
        up.add_metric([], 0 if jobs is None else 1)
        yield up
        if jobs is not None:
            family = gauge(
                "queue_jobs",
                "RQ jobs per queue: waiting (queued), running (started), delayed (scheduled), failed.",
                ["queue", "status"],
            )
            for (queue, status), n in jobs.items():
                family.add_metric([queue, status], n)
            yield family
        yield from self._pacing_and_liveness(workspaces)

    def _pacing_and_liveness(self, workspaces: set[int]) -> Iterator[Metric]:
        """Rate-limit waits per workspace (counted by ratelimit.record_wait), the age of the last
        maintenance tick and the live RQ workers; nothing when Redis does not answer."""
        from . import liveness, ratelimit

        try:
            conn = ratelimit.redis_connection()
            waits = ratelimit.waits(conn)
            tick = liveness.last_tick(conn)
            workers = liveness.live_workers(conn)
        except (RedisError, OSError):
            return
        n = CounterMetricFamily(
            PREFIX + "rate_limit_waits",
            "Times a worker waited for its workspace's rate limit before sending.",
            labels=["workspace"],
        )
        seconds = CounterMetricFamily(
            PREFIX + "rate_limit_wait_seconds",
            "Seconds workers spent waiting for their workspace's rate limit.",
            labels=["workspace"],
        )
        for ws in workspaces:
            waits.setdefault(ws, (0, 0.0))
        for ws, (count, waited) in sorted(waits.items()):
            n.add_metric([str(ws)], count)
            seconds.add_metric([str(ws)], waited)
        yield from (n, seconds)
        age = gauge(
            "maintenance_tick_age_seconds",
            "Seconds since the last maintenance tick finished (absent: none on record).",
        )
        if tick is not None:
            age.add_metric([], max(0.0, time.time() - tick))
        yield age
        live = gauge("rq_workers", "RQ workers registered and not expired.")
        live.add_metric([], workers)
        yield live


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(ClayopsCollector())


def exposition() -> bytes:
    """The metrics in Prometheus' text format (version 0.0.4)."""
    return generate_latest(REGISTRY)
