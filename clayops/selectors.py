"""Read-side queries for the dashboard's pages. Keyword-only, no writes.

Tables are paginated by keyset (the id, or (created_at, id) for the DLQ) and fetch `size + 1` rows
to know whether there is a next page: no COUNT(*) of a million-row table on a page view or a poll.
The few totals shown (queue depths, deferral banners, DLQ groups and state counts) come from the
background count of clayops.counts (one cache GET per page, whatever the size of the tables); an
operator's DLQ action recounts the DLQ part before answering, so its effect shows at once. Only DLQ
groups filtered by a date range are counted per request (cached DLQ_CACHE_SECONDS under a
generation number that every DLQ change bumps).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from . import breaker as breaker_service
from . import counts
from . import health as health_service
from . import nodes as nodes_service
from .delivery import resolution
from .dlq import GENERATION_KEY
from .imports.run import MAX_STORED_ERRORS
from .models import (
    Attempt,
    AuditEntry,
    CircuitBreaker,
    CircuitEvent,
    CreditBudget,
    CreditReservation,
    CreditUsage,
    DeadLetter,
    ImportRowError,
    Lead,
    LeadImport,
    Webhook,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
DLQ_CACHE_SECONDS = 5
RECENT_EVENTS = 5
BURN_WINDOW_MINUTES = 15
FIRST_ERRORS = 10
LEAD_ATTEMPTS = 50

# Lead states in pipeline order; the overview always shows the first group, the rest when non-zero.
PIPELINE_STATES = [
    Lead.State.QUEUED,
    Lead.State.SUBMITTING,
    Lead.State.ACCEPTED,
    Lead.State.ENRICHED,
    Lead.State.OVERDUE,
    Lead.State.UNCERTAIN,
    Lead.State.DEFERRED,
    Lead.State.RETRY_WAIT,
    Lead.State.DEAD,
]
OTHER_STATES = [
    Lead.State.RECEIVED,
    Lead.State.DELIVERED,
    Lead.State.SERVED_CACHE,
    Lead.State.SERVED_FALLBACK,
    Lead.State.DISCARDED,
]

OFFLINE_STATES = (Lead.State.DEFERRED, Lead.State.SERVED_CACHE, Lead.State.SERVED_FALLBACK)

B = CircuitBreaker.State
# Words for every breaker state (the colour is never the only signal) and the tone that colours them.
CIRCUIT_WORDS: dict[str, Any] = {
    B.CLOSED: ("Closed", "sending normally", "ok"),
    B.HALF_OPEN: ("Half-open", "letting probe requests through", "warn"),
    B.OPEN: ("Open", "not sending: cooling down after failures", "bad"),
    B.FORCED_OPEN: ("Paused", "forced open by an operator until reset", "bad"),
}
HEALTH_TONES = {"healthy": "ok", "degraded": "warn", "unhealthy": "bad"}
LEAD_TONES: dict[str, Any] = {
    Lead.State.ENRICHED: "ok",
    Lead.State.ACCEPTED: "ok",
    Lead.State.SERVED_CACHE: "warn",
    Lead.State.SERVED_FALLBACK: "warn",
    Lead.State.DEFERRED: "warn",
    Lead.State.RETRY_WAIT: "warn",
    Lead.State.UNCERTAIN: "warn",
    Lead.State.OVERDUE: "bad",
    Lead.State.DELIVERED: "ok",
    Lead.State.DEAD: "bad",
    Lead.State.DISCARDED: "muted",
}
DLQ_TONES: dict[str, Any] = {
    DeadLetter.State.PENDING: "bad",
    DeadLetter.State.EXHAUSTED: "bad",
    DeadLetter.State.RETRYING: "warn",
    DeadLetter.State.RESOLVED: "ok",
    DeadLetter.State.DISCARDED: "muted",
}


def page_size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        return DEFAULT_PAGE_SIZE
    return max(1, min(MAX_PAGE_SIZE, size))


@dataclass
class Page:
    items: list[Any]
    next_cursor: str | None
    is_first: bool


def _keyset_by_id(qs: QuerySet, *, cursor: str | None, size: int) -> Page:
    """Newest first by id; `cursor` is the last id of the previous page."""
    after = _int(cursor)
    if after is not None:
        qs = qs.filter(pk__lt=after)
    rows = list(qs.order_by("-pk")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, str(rows[-1].pk) if more and rows else None, after is None)


def _keyset_by_time(qs: QuerySet, *, field: str, cursor: str | None, size: int) -> Page:
    """Newest first by (`field`, id); the cursor is "<microseconds since epoch>_<id>" of the last row."""
    after = _parse_time_cursor(cursor)
    if after is not None:
        at, pk = after
        qs = qs.filter(Q(**{f"{field}__lt": at}) | Q(**{field: at, "pk__lt": pk}))
    rows = list(qs.order_by(f"-{field}", "-pk")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(
        rows, _time_cursor(getattr(rows[-1], field), rows[-1].pk) if more and rows else None, after is None
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time_cursor(at: datetime, pk: int) -> str:
    delta = at - EPOCH
    return f"{(delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds}_{pk}"


def _parse_time_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    if not cursor or "_" not in cursor:
        return None
    micros, _, pk = cursor.partition("_")
    try:
        return EPOCH + timedelta(microseconds=int(micros)), int(pk)
    except (ValueError, OverflowError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# --- Overview -----------------------------------------------------------------------------------


@dataclass
class ActionsGauge:
    """Clay's second meter: Actions (one per HTTP API call Clay makes for a row), today."""

    limit: int | None  # None: no Actions limit (counted, never refused)
    spent: int
    reserved: int
    alert_percent: int

    @property
    def used(self) -> int:
        return self.spent + self.reserved

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def _pct(self, value: int) -> float:
        if self.limit is None:
            return 0.0
        return round(min(100.0, value * 100 / self.limit), 1) if self.limit > 0 else (100.0 if value else 0.0)

    @property
    def spent_percent(self) -> float:
        return self._pct(self.spent)

    @property
    def reserved_percent(self) -> float:
        return max(0.0, min(100.0 - self.spent_percent, self._pct(self.reserved)))

    @property
    def used_percent(self) -> float:
        return self.spent_percent + self.reserved_percent

    @property
    def tone(self) -> str:
        if self.limit is None:
            return "ok"
        if self.limit == 0 or self.used >= self.limit:
            return "bad"
        return "warn" if self.used_percent >= self.alert_percent else "ok"


@dataclass
class BudgetGauge:
    budget_id: int
    name: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    remaining: Decimal
    saved: Decimal  # not spent: leads served from the cache instead of a send (cache-aware sending)
    spent_percent: float
    reserved_percent: float
    alert_percent: int
    burn_per_minute: Decimal
    exhausts_at: datetime | None
    resets_at: datetime
    timezone: str
    actions: ActionsGauge | None = None

    @property
    def used_percent(self) -> float:
        return self.spent_percent + self.reserved_percent

    @property
    def tone(self) -> str:
        if self.used_percent >= 100:
            return "bad"
        return "warn" if self.used_percent >= self.alert_percent else "ok"

    @property
    def exhausts_before_reset(self) -> bool:
        return self.exhausts_at is not None and self.exhausts_at < self.resets_at


def budget_gauge(*, budget: CreditBudget, now: datetime | None = None) -> BudgetGauge:
    """Today's spend for one budget, and when it runs out at the burn of the last minutes.

    The burn is what was reserved in the last BURN_WINDOW_MINUTES (every send reserves first), so
    the projection follows the current pace, not the day's average.
    """
    now = now or timezone.now()
    day = budget.day_for(now)
    # Read only: a day with no usage row yet reads as nothing spent (the row is made by the first hold).
    usage = CreditUsage.objects.filter(budget=budget, day=day).first() or CreditUsage(budget=budget, day=day)
    limit = budget.daily_limit
    spent, reserved = usage.spent, usage.reserved
    remaining = max(Decimal("0"), limit - spent - reserved)
    since = now - timedelta(minutes=BURN_WINDOW_MINUTES)
    burned = (
        CreditReservation.objects.filter(usage=usage, created_at__gte=since).aggregate(total=Sum("amount"))[
            "total"
        ]
        if usage.pk
        else None
    ) or Decimal("0")
    burn = burned / BURN_WINDOW_MINUTES
    exhausts_at = None
    if remaining <= 0:
        exhausts_at = now
    elif burn > 0:
        exhausts_at = now + timedelta(minutes=float(remaining / burn))
    local = now.astimezone(budget.tz())
    resets_at = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=budget.tz())

    def pct(value: Decimal) -> float:
        return round(float(value / limit * 100), 1) if limit > 0 else (100.0 if value > 0 else 0.0)

    return BudgetGauge(
        budget_id=budget.pk,
        name=budget.name,
        limit=limit,
        spent=spent,
        reserved=reserved,
        remaining=remaining,
        saved=usage.saved,
        spent_percent=min(100.0, pct(spent)),
        reserved_percent=max(0.0, min(100.0 - min(100.0, pct(spent)), pct(reserved))),
        alert_percent=budget.alert_percent,
        burn_per_minute=burn.quantize(Decimal("0.01")),
        exhausts_at=exhausts_at,
        resets_at=resets_at,
        timezone=budget.timezone,
        actions=ActionsGauge(
            limit=budget.actions_daily_limit,
            spent=usage.actions_spent,
            reserved=usage.actions_reserved,
            alert_percent=budget.alert_percent,
        ),
    )


@dataclass
class Circuit:
    state: str
    label: str
    meaning: str
    tone: str
    cooldown_until: datetime | None
    cooldown_remaining: float
    opened_at: datetime | None
    consecutive_failures: int


def _circuit(row: CircuitBreaker | None, *, now: datetime) -> Circuit:
    if row is None:
        label, meaning, tone = CIRCUIT_WORDS[B.CLOSED]
        return Circuit(B.CLOSED, label, "no breaker row yet: sending normally", tone, None, 0.0, None, 0)
    label, meaning, tone = CIRCUIT_WORDS.get(row.state, (row.state, "", "warn"))
    remaining = 0.0
    until = None
    state = row.state
    if row.state == B.OPEN:
        remaining = max(0.0, float(breaker_service.cooldown_remaining(row, now=now)))
        until = now + timedelta(seconds=remaining)
        if remaining <= 0:
            # Cooled down: the probe is scheduled for this moment; show the state it is entering.
            state = B.HALF_OPEN
            label, _, tone = CIRCUIT_WORDS[B.HALF_OPEN]
            meaning = "cooldown over: the next request is a probe"
    return Circuit(state, label, meaning, tone, until, remaining, row.opened_at, row.consecutive_failures)


@dataclass
class Card:
    webhook: Webhook
    circuit: Circuit
    health: Any
    health_tone: str
    sparkline: list[float | None]
    gauge: BudgetGauge
    depths: Sequence[tuple[str, int]]
    sent_per_minute: int
    accepted_per_minute: int
    events: list[CircuitEvent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    next_resend_at: datetime | None = None  # the earliest automatic resend of an uncertain lead

    def count(self, state: str) -> int:
        return next((n for s, n in self.depths if s == state), 0)

    @property
    def overdue(self) -> int:
        return self.count(Lead.State.OVERDUE)

    @property
    def uncertain(self) -> int:
        return self.count(Lead.State.UNCERTAIN)

    @property
    def offline(self) -> int:
        """Leads in the offline queue (deferred, or served a degraded answer) a drain would release."""
        return sum(n for state, n in self.depths if state in OFFLINE_STATES)


def queue_depths(*, webhook_ids: list[int], use_cache: bool = True) -> dict[int, dict]:
    """{webhook id: {state: count}}: from the background count (clayops.counts), or, with
    use_cache=False (one card, right after an operator's action on it), counted for those webhooks."""
    if use_cache:
        counted = counts.snapshot()["depths"]
        return {pk: dict(counted.get(pk, {})) for pk in webhook_ids}
    depths: dict[int, dict] = {pk: {} for pk in webhook_ids}
    rows = (
        Lead.objects.filter(webhook_id__in=webhook_ids)
        .order_by()
        .values_list("webhook_id", "state")
        .annotate(n=Count("*"))
    )
    for webhook_id, state, n in rows:
        depths[webhook_id][state] = n
    return depths


def counted_at() -> datetime | None:
    """When the totals the pages show were counted (clayops.counts)."""
    return counts.snapshot().get("at")


def _throughput(webhook_ids: list[int], *, now: datetime) -> dict[int, tuple[int, int]]:
    """Attempts and accepted attempts per webhook in the last minute (index `attempt_webhook_started`)."""
    rows = (
        Attempt.objects.filter(webhook_id__in=webhook_ids, started_at__gte=now - timedelta(minutes=1))
        .order_by()
        .values_list("webhook_id")
        .annotate(n=Count("pk"), ok=Count("pk", filter=Q(outcome=Attempt.Outcome.ACCEPTED)))
    )
    return {webhook_id: (n, ok) for webhook_id, n, ok in rows}


def _notes(webhook: Webhook, *, now: datetime) -> list[str]:
    notes = []
    if not webhook.is_active:
        notes.append("Inactive: no leads are sent to it.")
    if webhook.broken_reason:
        notes.append(f"Broken: {webhook.broken_reason}")
    if webhook.is_full:
        notes.append("Full: its lifetime row cap is reached; leads go to the next webhook.")
    if webhook.paused_until and webhook.paused_until > now:
        notes.append(f"Rate-limited by Clay until {timezone.localtime(webhook.paused_until):%H:%M:%S}.")
    ws = webhook.workspace
    if ws.paused_until and ws.paused_until > now:
        why = f" ({ws.pause_reason})" if ws.pause_reason else ""
        notes.append(f"Workspace paused until {timezone.localtime(ws.paused_until):%H:%M:%S}{why}.")
    return notes


def overview_cards(*, now: datetime | None = None, webhook_id: int | None = None) -> list[Card]:
    """One card per webhook: circuit, health and sparkline, budget gauge, queue depths, throughput."""
    now = now or timezone.now()
    hooks = Webhook.objects.select_related("workspace__budget", "breaker").order_by("priority", "pk")
    if webhook_id is not None:
        hooks = hooks.filter(pk=webhook_id)
    webhooks = list(hooks)
    ids = [w.pk for w in webhooks]
    if not ids:
        return []
    reports = health_service.reports(ids, now=now)
    depths = queue_depths(webhook_ids=ids, use_cache=webhook_id is None)  # one card: after an action
    throughput = _throughput(ids, now=now)
    sparklines = health_service.sparklines(ids, now=now, minutes=60)
    resend = counts.snapshot().get("resend") if webhook_id is None else None
    gauges: dict[int, BudgetGauge] = {}
    cards = []
    for webhook in webhooks:
        budget = webhook.workspace.budget
        if budget.pk not in gauges:
            gauges[budget.pk] = budget_gauge(budget=budget, now=now)
        row = webhook.breaker if _has_breaker(webhook) else None
        report = reports.get(webhook.pk)
        by_state = depths.get(webhook.pk, {})
        shown = [(s, by_state.get(s, 0)) for s in PIPELINE_STATES]
        shown += [(s, by_state[s]) for s in OTHER_STATES if by_state.get(s)]
        sent, ok = throughput.get(webhook.pk, (0, 0))
        events = (
            list(CircuitEvent.objects.filter(breaker=row).select_related("by")[:RECENT_EVENTS]) if row else []
        )
        cards.append(
            Card(
                webhook=webhook,
                circuit=_circuit(row, now=now),
                health=report,
                health_tone=HEALTH_TONES.get(getattr(report, "status", ""), "muted"),
                sparkline=sparklines[webhook.pk],
                gauge=gauges[budget.pk],
                depths=shown,
                sent_per_minute=sent,
                accepted_per_minute=ok,
                events=events,
                notes=_notes(webhook, now=now),
                next_resend_at=_next_resend(webhook, resend) if by_state.get(Lead.State.UNCERTAIN) else None,
            )
        )
    return cards


def _next_resend(webhook: Webhook, counted: dict | None) -> datetime | None:
    """From the background count; counted here for a single card (after an action on it) or when
    the snapshot predates this part of it."""
    if counted is not None:
        return counted.get(webhook.pk)
    uncertain = Lead.objects.filter(webhook=webhook, state=Lead.State.UNCERTAIN)
    return uncertain.order_by("next_attempt_at").values_list("next_attempt_at", flat=True).first()


def _has_breaker(webhook: Webhook) -> bool:
    try:
        webhook.breaker  # noqa: B018 - select_related; raises when the row does not exist
    except CircuitBreaker.DoesNotExist:
        return False
    return True


def process_nodes() -> list[nodes_service.Node]:
    """The processes `up` supervises on every node (published to Redis; [] when none runs `up`)."""
    return nodes_service.read_all()


def cards_version(cards: list[Card], nodes: Sequence[nodes_service.Node] = ()) -> str:
    """A short token that changes when anything a card shows changes (the poll's "nothing new" test).

    Built from deadlines rather than the seconds left, so a ticking cooldown does not count as a
    change (the browser counts it down itself).
    """
    parts = []
    for card in cards:
        c = card.circuit
        parts.append(
            [
                card.webhook.pk,
                card.webhook.name,
                card.webhook.rows_sent,
                c.state,
                c.cooldown_until.replace(microsecond=0).isoformat() if c.cooldown_until else None,
                asdict(card.health) if _is_dataclass(card.health) else repr(card.health),
                card.sparkline,
                [f"{v:.2f}" for v in (card.gauge.spent, card.gauge.reserved, card.gauge.limit)],
                asdict(card.gauge.actions) if card.gauge.actions else None,
                f"{card.gauge.burn_per_minute:.2f}",
                card.depths,
                card.sent_per_minute,
                card.accepted_per_minute,
                [e.pk for e in card.events],
                card.notes,
            ]
        )
    parts.append([[node.name, [asdict(child) for child in node.children]] for node in nodes])
    raw = json.dumps(parts, default=str, sort_keys=True).encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def _is_dataclass(value: Any) -> bool:
    return hasattr(value, "__dataclass_fields__")


# --- Leads --------------------------------------------------------------------------------------


def leads_page(*, filters: dict, cursor: str | None = None, size: int = DEFAULT_PAGE_SIZE) -> Page:
    """Leads, newest first (by id; by time of entering the state when filtered by state alone).
    Filters: q, state, webhook, lead_import.

    q: an email (has "@") or a domain (has a dot, no space) is matched exactly, lower-cased, on its
    index; anything else is a domain prefix or a company substring, checked while the keyset scan
    walks back from the newest id (it stops as soon as a page is full)."""
    qs = Lead.objects.select_related("webhook", "lead_import").defer("row", "enriched", "served")
    q = (filters.get("q") or "").strip()
    if q:
        lower = q.lower()
        if "@" in lower:
            qs = qs.filter(email=lower.removeprefix("mailto:"))
        elif "." in lower and " " not in lower:
            qs = qs.filter(domain=lower.removeprefix("www."))
        else:
            qs = qs.filter(Q(domain__startswith=lower) | Q(company__icontains=q))
    if filters.get("state"):
        qs = qs.filter(state=filters["state"])
    if filters.get("webhook"):
        qs = qs.filter(webhook_id=_pk(filters["webhook"]))  # type: ignore[misc]
    if filters.get("lead_import"):
        qs = qs.filter(lead_import_id=_pk(filters["lead_import"]))
    if filters.get("state") and not filters.get("webhook") and not filters.get("lead_import"):
        # The `lead_state_changed` index serves this order; by id it would sort every lead in the state.
        return _keyset_by_time(qs, field="state_changed_at", cursor=cursor, size=size)
    return _keyset_by_id(qs, cursor=cursor, size=size)


def _pk(value: Any) -> int | None:
    return getattr(value, "pk", None) or _int(value)


@dataclass
class LeadDetail:
    lead: Lead
    attempts: list[Attempt]
    dead_letters: list[DeadLetter]
    charges: list[CreditReservation] = field(default_factory=list)  # one per send, oldest first
    resend: dict | None = None  # the resend forecast, for a lead an operator may resolve

    @property
    def resolvable(self) -> bool:
        return self.lead.state in resolution.RESOLVABLE


def lead_detail(*, lead_id: int) -> LeadDetail | None:
    lead = Lead.objects.select_related("webhook", "lead_import").filter(pk=lead_id).first()
    if lead is None:
        return None
    attempts = list(lead.attempts.select_related("webhook")[:LEAD_ATTEMPTS])
    dead_letters = list(lead.dead_letters.select_related("webhook")[:10])
    charges = list(CreditReservation.objects.filter(lead=lead).order_by("id")[:20])
    detail = LeadDetail(lead, attempts, dead_letters, charges)
    if detail.resolvable:
        detail.resend = resolution.resend_forecast([lead.pk])
    return detail


def resolve_summary(*, state: str, webhook_id: int | None = None) -> dict | None:
    """For the leads page filtered on overdue, uncertain or served leads: how many, and what a resend
    (or a re-enrichment) costs."""
    if state not in resolution.RESOLVABLE:
        return None
    ids = resolution.select(state=state, webhook_id=webhook_id)
    served = state in resolution.SERVED
    return {"state": state, "webhook_id": webhook_id, "served": served, **resolution.resend_forecast(ids)}


# --- Imports ------------------------------------------------------------------------------------


def imports_page(*, cursor: str | None = None, size: int = DEFAULT_PAGE_SIZE) -> Page:
    qs = LeadImport.objects.select_related("uploaded_by", "webhook")
    return _keyset_by_id(qs, cursor=cursor, size=size)


@dataclass
class ImportSummary:
    lead_import: LeadImport
    first_errors: list[ImportRowError]
    max_stored_errors: int = MAX_STORED_ERRORS

    @property
    def finished(self) -> bool:
        return self.lead_import.state in (
            LeadImport.State.DONE,
            LeadImport.State.FAILED,
            LeadImport.State.CANCELLED,
        )

    @property
    def took_seconds(self) -> float | None:
        imp = self.lead_import
        if imp.started_at and imp.finished_at:
            return (imp.finished_at - imp.started_at).total_seconds()
        return None


def import_summary(*, import_id: int) -> ImportSummary | None:
    """The import with its first row errors (by line), for the validation summary."""
    related = ("uploaded_by", "webhook", "cancelled_by")
    imp = LeadImport.objects.select_related(*related).filter(pk=import_id).first()
    if imp is None:
        return None
    errors = list(ImportRowError.objects.filter(lead_import=imp).order_by("line", "pk")[:FIRST_ERRORS])
    return ImportSummary(imp, errors)


def import_exists(import_id: int) -> bool:
    return LeadImport.objects.filter(pk=import_id).exists()


def import_row_errors(import_id: int) -> Iterator[tuple[int, str, str]]:
    """(line, reason, row as read) of every invalid row the import stored, in file order."""
    rows = ImportRowError.objects.filter(lead_import_id=import_id).order_by("line", "pk")
    return rows.values_list("line", "error", "raw").iterator(chunk_size=2000)


# --- Dead letter queue --------------------------------------------------------------------------

DLQ_STATE_ANY = "any"


def _dlq_filtered(filters: dict, *, with_class: bool = True) -> QuerySet:
    qs = DeadLetter.objects.all()
    state = filters.get("state") or DeadLetter.State.PENDING
    if state != DLQ_STATE_ANY:
        qs = qs.filter(state=state)
    if filters.get("webhook"):
        qs = qs.filter(webhook_id=_pk(filters["webhook"]))  # type: ignore[misc]
    if with_class and filters.get("error_class"):
        qs = qs.filter(error_class=filters["error_class"])
    tz = timezone.get_current_timezone()
    if isinstance(filters.get("since"), date):
        qs = qs.filter(created_at__gte=datetime.combine(filters["since"], time(0), tzinfo=tz))
    if isinstance(filters.get("until"), date) and filters["until"] < date.max:
        qs = qs.filter(
            created_at__lt=datetime.combine(filters["until"] + timedelta(days=1), time(0), tzinfo=tz)
        )
    return qs


def dlq_page(*, filters: dict, cursor: str | None = None, size: int = DEFAULT_PAGE_SIZE) -> Page:
    """DLQ entries, newest first, by keyset on (created_at, id): the `dlq_state_created` index
    serves the state filter and the order together."""
    qs = _dlq_filtered(filters).select_related("lead", "webhook")
    qs = qs.only(
        "id",
        "created_at",
        "updated_at",
        "error",
        "error_class",
        "status_code",
        "retry_count",
        "max_retries",
        "next_retry_at",
        "state",
        "lead__id",
        "lead__email",
        "lead__domain",
        "lead__company",
        "lead__state",
        "webhook__id",
        "webhook__name",
    )
    return _keyset_by_time(qs, field="created_at", cursor=cursor, size=size)


def _dlq_cached(name: str, parts: dict, compute):
    """compute(), cached for DLQ_CACHE_SECONDS under the DLQ's generation (see dlq.changed)."""

    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    key = f"clayops:dlq:{name}:{cache.get(GENERATION_KEY, 0)}:{digest}"
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.set(key, value, DLQ_CACHE_SECONDS)
    return value


def dlq_groups(*, filters: dict) -> list[dict]:
    """Counts by error class for the current filters (except the error class itself), largest first:
    from the background count (clayops.counts); with a date range, counted (cached DLQ_CACHE_SECONDS)."""
    parts = {k: filters.get(k) for k in ("state", "webhook", "since", "until")}
    if not isinstance(filters.get("since"), date) and not isinstance(filters.get("until"), date):
        return _dlq_groups_counted(filters)

    def compute() -> list[dict]:
        rows = (
            _dlq_filtered(filters, with_class=False)
            .order_by()
            .values("error_class")
            .annotate(n=Count("*"))
            .order_by("-n", "error_class")
        )
        return [{"error_class": row["error_class"], "count": row["n"]} for row in rows]

    return _dlq_cached("groups", parts, compute)


def _dlq_groups_counted(filters: dict) -> list[dict]:
    state = filters.get("state") or DeadLetter.State.PENDING
    webhook_id = _pk(filters["webhook"]) if filters.get("webhook") else None
    per_class: dict[str, int] = {}
    for row_state, error_class, row_webhook, n in counts.snapshot()["dlq"]:
        if state != DLQ_STATE_ANY and row_state != state:
            continue
        if webhook_id is not None and row_webhook != webhook_id:
            continue
        per_class[error_class] = per_class.get(error_class, 0) + n
    ranked = sorted(per_class.items(), key=lambda item: (-item[1], item[0]))
    return [{"error_class": error_class, "count": n} for error_class, n in ranked if n]


def dlq_error_classes() -> list[str]:
    """Error classes seen in the DLQ, for the filter: from the background count (clayops.counts)."""
    return sorted({error_class for _, error_class, _, _ in counts.snapshot()["dlq"]})[:100]


def dlq_state_counts() -> list[tuple[str, int]]:
    """Entries per unfinished state (pending, exhausted, retrying), from the background count."""
    open_states = [DeadLetter.State.PENDING, DeadLetter.State.EXHAUSTED, DeadLetter.State.RETRYING]
    per_state: dict[str, int] = {}
    for state, _, _, n in counts.snapshot()["dlq"]:
        per_state[state] = per_state.get(state, 0) + n
    return [(state, per_state.get(state, 0)) for state in open_states]


@dataclass
class DlqEntryDetail:
    entry: DeadLetter
    lead: Lead
    attempts: list[Attempt]


def dlq_entry(*, entry_id: int) -> DlqEntryDetail | None:
    entry = (
        DeadLetter.objects.select_related("lead", "webhook", "lead__lead_import").filter(pk=entry_id).first()
    )
    if entry is None:
        return None
    attempts = list(Attempt.objects.filter(lead_id=entry.lead_id).select_related("webhook")[:LEAD_ATTEMPTS])
    return DlqEntryDetail(entry, entry.lead, attempts)


# --- Audit --------------------------------------------------------------------------------------


def audit_page(*, filters: dict, cursor: str | None = None, size: int = DEFAULT_PAGE_SIZE) -> Page:
    qs = AuditEntry.objects.select_related("user")
    if filters.get("action"):
        qs = qs.filter(action=filters["action"])
    if filters.get("user"):
        qs = qs.filter(user__username=filters["user"])
    return _keyset_by_id(qs, cursor=cursor, size=size)


def audit_actions() -> list[str]:
    return sorted(AuditEntry.objects.order_by().values_list("action", flat=True).distinct()[:100])


def webhook_choices() -> list[Webhook]:
    return list(Webhook.objects.only("pk", "name").order_by("priority", "pk"))
