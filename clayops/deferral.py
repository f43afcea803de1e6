"""Why a waiting lead waits, and until when, in an operator's words (a read: no writes).

A deferred lead records why it was held back (`Lead.defer_reason`, written by `clayops.delivery`) and
perhaps until when (`next_attempt_at`). Both are a snapshot of the moment it was deferred; this module
reads them together with the CURRENT state of what held the lead back (the workspace's budget today,
the webhook's breaker, the 429 and 402 pauses, the webhooks that can still take rows), so the answer
is live: a budget deferral says when the budget resets in the workspace's time zone, a breaker
deferral when the cooldown ends, and a blocker that has cleared meanwhile says so.

- `explain(lead)`: one lead.
- `explain_many(leads)` / `explain_lead_ids(ids)`: a page of leads in a bounded number of queries.
- `banners(webhook_ids)`: per webhook, one line per cause with the number of leads waiting on it.
- `dlq_drain_estimate(...)`: how long a DLQ drain takes at the drain rate and the workspaces' limits.

Times are shown in the workspace's time zone (its budget's: the zone whose midnight starts a budget
day), with the time left ("in 3 h 12 min").
"""

from __future__ import annotations

import hashlib
import json
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone

from . import breaker as breaker_service
from . import counts
from .models import CircuitBreaker, CreditUsage, DeadLetter, Lead, Webhook, Workspace

S = Lead.State
B = CircuitBreaker.State

# Lead states that wait for something: the offline queue (deferred, or served a degraded answer
# meanwhile) and retries waiting for their time.
OFFLINE_STATES = (S.DEFERRED, S.SERVED_CACHE, S.SERVED_FALLBACK)
WAITING_STATES = (*OFFLINE_STATES, S.RETRY_WAIT)

# The defer_reason values clayops.delivery writes (guards, routing, outcomes).
REASON_BUDGET = "daily credit budget exhausted"  # guards._fund
REASON_CIRCUIT = "circuit"  # guards.blocked_reason "circuit open"; guards._admit "circuit <state>"
REASON_WEBHOOK_429 = "webhook paused by Clay (429)"  # guards.blocked_reason
REASON_WORKSPACE_PAUSED = "workspace paused:"  # guards.blocked_reason "workspace paused: <pause_reason>"
REASON_402 = "Clay credits exhausted (402)"  # outcomes._payment
REASON_HOURLY = "hourly record cap reached"  # guards._refuse_before_claim
REASON_NO_WEBHOOK = "no active webhook with room"  # routing.plan_chunks

# Kinds of cause (Deferral.kind).
BUDGET = "budget"
BREAKER = "breaker"
RATE_LIMITED = "rate_limited"  # Clay's 429
PAYMENT = "payment"  # Clay's 402
PAUSED = "paused"  # the workspace paused for another reason (an operator)
HOURLY_CAP = "hourly_cap"
NO_WEBHOOK = "no_webhook"  # lifetime row cap reached / webhook broken or inactive, nowhere to fail over
BACKOFF = "backoff"
CLEARED = "cleared"  # what held it back is gone: the next offline drain releases it
OTHER = "other"  # a reason this module does not know: shown as recorded

COUNTDOWN_MAX_SECONDS = 3600  # below this the browser counts down (app.js: "12 min 5 s")

ERROR_WORDS = {
    "timeout": "a timeout",
    "connection": "a connection error",
    "server_error": "a server error",
    "conflict": "a 409 conflict",
    "rate_limited": "a 429",
}
STATE_VERBS = {
    S.DEFERRED: "deferred",
    S.SERVED_CACHE: "deferred (served from cache meanwhile)",
    S.SERVED_FALLBACK: "deferred (served a fallback meanwhile)",
    S.RETRY_WAIT: "waiting to retry",
}


@dataclass(frozen=True)
class Deferral:
    """Why a lead waits and until when: `text` is the whole sentence, e.g.
    "budget used up: resumes at 00:00 America/Los_Angeles (in 3 h 12 min)"."""

    kind: str
    cause: str  # "budget used up"
    when: str = ""  # "resumes at 00:00 America/Los_Angeles": the absolute part, no time left
    until: datetime | None = None  # when it may go again (None: not known, or not by time)
    relative: str = ""  # "3 h 12 min": the time left at `now`, "" when `until` is None or past
    joiner: str = ": "  # between cause and when ("paused by Clay's 429 until 12:04:10")
    timezone: str = "UTC"
    seconds_left: float = 0.0  # until `until`, at the moment it was explained

    @property
    def text(self) -> str:
        text = self.cause
        if self.when:
            text += self.joiner + self.when
        if self.relative:
            text += f" (in {self.relative})"
        return text

    @property
    def countdown(self) -> bool:
        """Short enough for the browser's countdown (app.js formats minutes and seconds only)."""
        return bool(self.relative) and self.seconds_left < COUNTDOWN_MAX_SECONDS

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class BannerLine:
    """One cause on a webhook's card: how many leads wait on it (and in which state)."""

    count: int
    verb: str  # "deferred", "waiting to retry", ...
    deferral: Deferral

    @property
    def text(self) -> str:
        d = self.deferral
        lead = "lead" if self.count == 1 else "leads"
        text = f"{self.count:,} {lead} {self.verb}: {d.cause}"
        if d.when:
            text += f" — {d.when}"
        if d.relative:
            text += f" (in {d.relative})"
        return text


# --- formatting ---------------------------------------------------------------------------------


def relative(seconds: float) -> str:
    """42 → "42 s", 125 → "2 min 5 s", 11532 → "3 h 12 min", 2 days → "2 d 0 h"."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def clock(at: datetime, tz: zoneinfo.ZoneInfo, *, now: datetime, seconds: bool = True) -> str:
    """`at` in the zone: "12:04:10 Europe/Berlin"; another day: "Tue 1 Dec 12:04:10 Europe/Berlin".
    Without seconds, for the next budget reset: "00:00 America/Los_Angeles" (the coming midnight)."""
    local = at.astimezone(tz)
    text = local.strftime("%H:%M:%S" if seconds else "%H:%M")
    today = now.astimezone(tz).date()
    midnight = local.time() == time(0) and local.date() == today + timedelta(days=1)
    if local.date() != today and not midnight:
        text = f"{local.strftime('%a')} {local.day} {local.strftime('%b')} {text}"
    return f"{text} {tz.key}"


def next_reset(tz: zoneinfo.ZoneInfo, *, now: datetime) -> datetime:
    """The next midnight in the budget's zone: when a new budget day starts."""
    local = now.astimezone(tz)
    return datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=tz)


# --- what is known about the leads' webhooks now ------------------------------------------------


@dataclass
class Context:
    """The current state behind the leads: their webhooks (workspace, budget, breaker), each budget's
    credits left today, and the first webhook of each workspace that can still take rows."""

    now: datetime
    webhooks: dict[int, Webhook] = field(default_factory=dict)
    remaining: dict[int, Decimal] = field(default_factory=dict)  # budget id → credits left today
    actions_left: dict[int, int] = field(default_factory=dict)  # budget id → Actions left (if limited)
    usable: dict[int, Webhook] = field(default_factory=dict)  # workspace id → first usable webhook

    def breaker(self, webhook: Webhook) -> CircuitBreaker | None:
        try:
            return webhook.breaker
        except CircuitBreaker.DoesNotExist:
            return None


def load_context(webhook_ids: Iterable[int | None], *, now: datetime | None = None) -> Context:
    """Three queries whatever the number of webhooks: webhooks (with workspace, budget, breaker),
    today's usage of their budgets, the usable webhooks of their workspaces."""
    ctx = Context(now=now or timezone.now())
    ids = sorted({pk for pk in webhook_ids if pk is not None})
    if not ids:
        return ctx
    hooks = Webhook.objects.filter(pk__in=ids).select_related("workspace__budget", "breaker")
    ctx.webhooks = {w.pk: w for w in hooks}
    budgets = {w.workspace.budget.pk: w.workspace.budget for w in ctx.webhooks.values()}
    days = Q()
    for budget in budgets.values():
        days |= Q(budget_id=budget.pk, day=budget.day_for(ctx.now))
    used = {
        budget_id: (reserved + spent, actions_reserved + actions_spent)
        for budget_id, reserved, spent, actions_reserved, actions_spent in CreditUsage.objects.filter(
            days
        ).values_list("budget_id", "reserved", "spent", "actions_reserved", "actions_spent")
    }
    for pk, budget in budgets.items():
        credits, actions = used.get(pk, (Decimal("0"), 0))
        ctx.remaining[pk] = max(Decimal("0"), budget.daily_limit - credits)
        if budget.actions_daily_limit is not None:
            ctx.actions_left[pk] = max(0, budget.actions_daily_limit - actions)
    workspace_ids = {w.workspace_id for w in ctx.webhooks.values()}
    usable = (
        Webhook.objects.filter(
            workspace_id__in=workspace_ids, is_active=True, is_full=False, broken_reason=""
        )
        .select_related("workspace__budget", "breaker")
        .order_by("-priority", "-id")  # reversed: the dict ends with the first by priority
    )
    for hook in usable:
        ctx.usable[hook.workspace_id] = ctx.webhooks.setdefault(hook.pk, hook)
    return ctx


# --- one lead -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What explain() reads of a lead (a lead, or a group of them for a banner)."""

    state: str
    defer_reason: str
    next_attempt_at: datetime | None
    webhook_id: int | None
    attempt_count: int | None  # None for a group (attempts differ)
    error_class: str


def _facts(lead: Lead) -> _Facts:
    return _Facts(
        lead.state,
        lead.defer_reason or "",
        lead.next_attempt_at,
        lead.webhook_id,
        lead.attempt_count,
        lead.error_class or "",
    )


def explain(lead: Lead, *, now: datetime | None = None, context: Context | None = None) -> Deferral | None:
    """Why `lead` waits and until when; None when it is not waiting (not deferred, served or in
    retry_wait)."""
    if lead.state not in WAITING_STATES:
        return None
    ctx = context or load_context([lead.webhook_id], now=now)
    return _explain(_facts(lead), ctx)


def explain_many(leads: Sequence[Lead], *, now: datetime | None = None) -> dict[int, Deferral]:
    """{lead id: Deferral} for the waiting leads among `leads` (a page): three queries in all."""
    waiting = [lead for lead in leads if lead.state in WAITING_STATES]
    if not waiting:
        return {}
    ctx = load_context([lead.webhook_id for lead in waiting], now=now)
    return {lead.pk: _explain(_facts(lead), ctx) for lead in waiting}


def explain_lead_ids(lead_ids: Iterable[int], *, now: datetime | None = None) -> dict[int, Deferral]:
    """explain_many() for leads given by id (one more query, for the leads)."""
    ids = list(lead_ids)
    if not ids:
        return {}
    leads = Lead.objects.filter(pk__in=ids, state__in=WAITING_STATES).only(
        "pk", "state", "defer_reason", "next_attempt_at", "webhook_id", "attempt_count", "error_class"
    )
    return explain_many(list(leads), now=now)


def _tz(webhook: Webhook | None) -> zoneinfo.ZoneInfo:
    if webhook is None:
        return zoneinfo.ZoneInfo("UTC")
    try:
        return webhook.workspace.budget.tz()
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


class _Say:
    """Builds Deferrals for one lead: its zone and `now`."""

    def __init__(self, ctx: Context, webhook: Webhook | None) -> None:
        self.ctx, self.now, self.tz = ctx, ctx.now, _tz(webhook)

    def __call__(
        self, kind: str, cause: str, when: str = "", until: datetime | None = None, joiner: str = ": "
    ) -> Deferral:
        left = (until - self.now).total_seconds() if until is not None else 0.0
        return Deferral(
            kind=kind,
            cause=cause,
            when=when,
            until=until,
            relative=relative(left) if until is not None and left >= 1 else "",
            joiner=joiner,
            timezone=self.tz.key,
            seconds_left=max(0.0, left),
        )

    def at(self, when: datetime, *, seconds: bool = True) -> str:
        return clock(when, self.tz, now=self.now, seconds=seconds)

    def future(self, *times: datetime | None) -> datetime | None:
        """The latest of `times`, if it is still ahead."""
        known = [t for t in times if t is not None]
        latest = max(known) if known else None
        return latest if latest is not None and latest > self.now else None


def _explain(facts: _Facts, ctx: Context) -> Deferral:
    webhook = ctx.webhooks.get(facts.webhook_id) if facts.webhook_id is not None else None
    say = _Say(ctx, webhook)
    if facts.state == S.RETRY_WAIT:
        return _retry_wait(facts, webhook, say)
    kind = classify(facts.defer_reason)
    if webhook is None:
        if kind == NO_WEBHOOK or facts.webhook_id is None:
            return say(NO_WEBHOOK, "no webhook", "waits until a webhook can take rows")
        return _recorded(facts, say)
    recorded = _live(kind, facts, webhook, say)
    if recorded is not None:
        return recorded
    # What held it back is gone: another blocker may hold it now (the drain checks them all).
    now_blocked = _current_blocker(facts, webhook, say)
    if now_blocked is not None:
        return now_blocked
    due = say.future(facts.next_attempt_at)
    if due is not None:
        return say(CLEARED, _cleared_cause(kind), f"released by the offline drain after {say.at(due)}", due)
    return say(CLEARED, _cleared_cause(kind), "released by the next offline drain (at the workspace's pace)")


def classify(defer_reason: str) -> str:
    """The kind of a recorded defer_reason (OTHER for a reason this module does not know)."""
    reason = defer_reason.strip()
    if reason == REASON_BUDGET:
        return BUDGET
    if reason.startswith(REASON_CIRCUIT):
        return BREAKER
    if reason == REASON_WEBHOOK_429:
        return RATE_LIMITED
    if reason == REASON_402 or (reason.startswith(REASON_WORKSPACE_PAUSED) and "402" in reason):
        return PAYMENT
    if reason.startswith(REASON_WORKSPACE_PAUSED):
        return PAUSED
    if reason == REASON_HOURLY:
        return HOURLY_CAP
    if reason == REASON_NO_WEBHOOK:
        return NO_WEBHOOK
    return OTHER


def _cleared_cause(kind: str) -> str:
    return {
        BUDGET: "budget has room again",
        BREAKER: "circuit closed again",
        RATE_LIMITED: "Clay's 429 pause is over",
        PAYMENT: "Clay's 402 pause is over",
        PAUSED: "workspace pause is over",
        HOURLY_CAP: "a new hour started (hourly row cap)",
        NO_WEBHOOK: "a webhook has room again",
    }.get(kind, "nothing holds it back now")


def _live(kind: str, facts: _Facts, webhook: Webhook, say: _Say) -> Deferral | None:
    """The recorded cause as it stands now; None when it has cleared."""
    if kind == BUDGET:
        return _budget(webhook, say)
    if kind == BREAKER:
        return _breaker(webhook, say)
    if kind == RATE_LIMITED:
        return _paused_429(facts, webhook, say)
    if kind in (PAYMENT, PAUSED):
        return _workspace_pause(facts, webhook.workspace, say, payment=kind == PAYMENT)
    if kind == HOURLY_CAP:
        until = say.future(facts.next_attempt_at)
        if until is None:
            return None
        cap = webhook.workspace.hourly_cap
        cause = f"hourly row cap reached ({cap:,} rows/h)" if cap else "hourly row cap reached"
        return say(HOURLY_CAP, cause, f"resumes at {say.at(until)}", until)
    if kind == NO_WEBHOOK:
        return _no_webhook(webhook, say)
    return _recorded(facts, say)


def _recorded(facts: _Facts, say: _Say) -> Deferral:
    """An unknown (or legacy) reason: shown as recorded, with next_attempt_at when there is one."""
    cause = facts.defer_reason or "deferred (no reason recorded)"
    until = say.future(facts.next_attempt_at)
    if until is None:
        return say(OTHER, cause)
    return say(OTHER, cause, f"until {say.at(until)}", until, joiner=" ")


def _current_blocker(facts: _Facts, webhook: Webhook, say: _Say) -> Deferral | None:
    """What would keep the offline drain from releasing the lead now (its order of checks)."""
    target = webhook if _usable(webhook) else say.ctx.usable.get(webhook.workspace_id)
    if target is None:
        return _no_webhook(webhook, say)
    return (
        _workspace_pause(facts, target.workspace, say, payment=None)
        or _paused_429(facts, target, say, recorded=False)
        or _breaker(target, say)
        or _budget(target, say)
    )


def _usable(webhook: Webhook) -> bool:
    return webhook.is_active and not webhook.is_full and not webhook.broken_reason


def _budget(webhook: Webhook, say: _Say) -> Deferral | None:
    budget = webhook.workspace.budget
    left = say.ctx.remaining.get(budget.pk, Decimal("0"))
    per_row = webhook.credits_per_row or Decimal("0")
    if budget.daily_limit <= 0:
        return say(BUDGET, "budget limit is 0", "nothing is sent until the daily limit is raised")
    if per_row > budget.daily_limit:
        return say(
            BUDGET,
            "budget too small",
            f"a row's {per_row:f} credits are more than the daily limit of {budget.daily_limit:f}",
        )
    if left >= per_row and (left > 0 or per_row == 0):
        return _actions(webhook, say)
    reset = next_reset(say.tz, now=say.now)
    return say(BUDGET, "budget used up", f"resumes at {say.at(reset, seconds=False)}", reset)


def _actions(webhook: Webhook, say: _Say) -> Deferral | None:
    """The budget's Clay Actions limit, where it has one: a row needs the webhook's Actions per row."""
    budget = webhook.workspace.budget
    left = say.ctx.actions_left.get(budget.pk)
    per_row = webhook.actions_per_row
    if left is None or per_row == 0 or left >= per_row:
        return None
    limit = budget.actions_daily_limit or 0
    if per_row > limit:
        return say(
            BUDGET,
            "Actions limit too small" if limit else "Actions limit is 0",
            f"a row's {per_row} Actions are more than the daily Actions limit of {limit:,}",
        )
    reset = next_reset(say.tz, now=say.now)
    return say(BUDGET, "Clay Actions used up", f"resumes at {say.at(reset, seconds=False)}", reset)


def _breaker(webhook: Webhook, say: _Say) -> Deferral | None:
    row = say.ctx.breaker(webhook)
    if row is None or row.state == B.CLOSED:
        return None
    if row.state == B.FORCED_OPEN:
        return say(BREAKER, "circuit paused by an operator", "waits until someone resets the breaker")
    remaining = breaker_service.cooldown_remaining(row, now=say.now) if row.state == B.OPEN else 0.0
    if remaining > 0:
        until = say.now + timedelta(seconds=remaining)
        return say(BREAKER, "circuit open", f"next probe at {say.at(until)}", until)
    return say(BREAKER, "circuit half-open", "probing Clay: released once the probes succeed")


def _paused_429(facts: _Facts, webhook: Webhook, say: _Say, *, recorded: bool = True) -> Deferral | None:
    times = [webhook.paused_until] + ([facts.next_attempt_at] if recorded else [])
    until = say.future(*times)
    if until is None:
        return None
    return say(RATE_LIMITED, "paused by Clay's 429", f"until {say.at(until)}", until, joiner=" ")


def _workspace_pause(
    facts: _Facts, workspace: Workspace, say: _Say, *, payment: bool | None
) -> Deferral | None:
    """The workspace's pause: a 402 (payment=True), an operator's (False), or whichever (None)."""
    times = [workspace.paused_until] + ([facts.next_attempt_at] if payment is not None else [])
    until = say.future(*times)
    if until is None:
        return None
    is_402 = payment if payment is not None else "402" in (workspace.pause_reason or "")
    if is_402:
        cause = "paused by Clay's 402 (out of Clay credits)"
    else:
        why = (workspace.pause_reason or "").strip()
        cause = f"workspace paused ({why})" if why else "workspace paused"
    return say(PAYMENT if is_402 else PAUSED, cause, f"until {say.at(until)}", until, joiner=" ")


def _no_webhook(webhook: Webhook, say: _Say) -> Deferral | None:
    other = say.ctx.usable.get(webhook.workspace_id)
    if _usable(webhook) or other is not None:
        return None
    where = f"no other webhook of {webhook.workspace.name} has room: add one"
    if webhook.is_full:
        cause = f"lifetime row cap reached ({webhook.name}: {webhook.row_cap:,} rows)"
    elif webhook.broken_reason:
        cause = f"webhook {webhook.name} broken ({webhook.broken_reason[:80]})"
    else:
        cause = f"webhook {webhook.name} inactive"
    return say(NO_WEBHOOK, cause, where)


def _retry_wait(facts: _Facts, webhook: Webhook | None, say: _Say) -> Deferral:
    if facts.error_class == "rate_limited":
        until = say.future(facts.next_attempt_at, webhook.paused_until if webhook else None)
        if until is not None:
            return say(RATE_LIMITED, "paused by Clay's 429", f"until {say.at(until)}", until, joiner=" ")
        return say(RATE_LIMITED, "Clay's 429 pause is over", "requeued by the next maintenance tick")
    after = ERROR_WORDS.get(facts.error_class, facts.error_class.replace("_", " ") or "a failure")
    if facts.attempt_count is None:
        cause = f"retrying after {after}"
        label = "next at"
    else:
        retries = max(1, settings.CLAYOPS_MAX_ATTEMPTS - 1)
        cause = f"retry {max(1, facts.attempt_count)} of {retries} (after {after})"
        label = "at"
    until = say.future(facts.next_attempt_at)
    if until is None:
        return say(BACKOFF, cause, "due now: requeued by the next maintenance tick")
    return say(BACKOFF, cause, f"{label} {say.at(until)}", until, joiner=" ")


# --- the overview's banner ----------------------------------------------------------------------


def _groups(webhook_ids: list[int], *, use_cache: bool) -> list[tuple]:
    """(webhook id, state, defer_reason, error_class, count, earliest next_attempt_at) of the waiting
    leads: from the background count (clayops.counts); with use_cache=False (one card, right after an
    operator's action on it) one GROUP BY over the `lead_webhook_state` index for these webhooks."""
    if use_cache:
        wanted = set(webhook_ids)
        return [row for row in counts.snapshot()["waiting"] if row[0] in wanted and row[1] in WAITING_STATES]
    return list(
        Lead.objects.filter(webhook_id__in=webhook_ids, state__in=WAITING_STATES)
        .order_by()
        .values_list("webhook_id", "state", "defer_reason", "error_class")
        .annotate(n=Count("*"), first=Min("next_attempt_at"))
    )


def banners(
    webhook_ids: Sequence[int], *, now: datetime | None = None, use_cache: bool = True
) -> dict[int, list[BannerLine]]:
    """{webhook id: one line per cause, most leads first}: "12 leads deferred: budget used up —
    resumes at 00:00 America/Los_Angeles (in 3 h 12 min)". Four queries whatever the number of
    webhooks and leads."""
    ids = sorted(set(webhook_ids))
    out: dict[int, list[BannerLine]] = {pk: [] for pk in ids}
    if not ids:
        return out
    rows = _groups(ids, use_cache=use_cache)
    if not rows:
        return out
    ctx = load_context([row[0] for row in rows], now=now)
    merged: dict[tuple, list] = {}
    for webhook_id, state, reason, error_class, n, first in rows:
        facts = _Facts(state, reason or "", first, webhook_id, None, error_class or "")
        deferral = _explain(facts, ctx)
        verb = STATE_VERBS.get(state, str(state))
        key = (webhook_id, verb, deferral.kind, deferral.cause, deferral.when)
        if key in merged:
            merged[key][0] += n
        else:
            merged[key] = [n, verb, deferral]
    for (webhook_id, *_), (n, verb, deferral) in merged.items():
        out[webhook_id].append(BannerLine(n, verb, deferral))
    for lines in out.values():
        lines.sort(key=lambda line: (-line.count, line.deferral.cause))
    return out


def banners_version(lines_by_webhook: dict[int, list[BannerLine]]) -> str:
    """A token that changes when a banner would read differently, but not every second a countdown
    ticks (deadlines, not seconds left; a time left too long for the browser's countdown counts by
    the minute, as it is shown)."""
    parts = [
        [
            pk,
            [
                [
                    line.count,
                    line.verb,
                    line.deferral.kind,
                    line.deferral.cause,
                    line.deferral.when,
                    line.deferral.until.replace(microsecond=0).isoformat() if line.deferral.until else None,
                    "" if line.deferral.countdown else line.deferral.relative,
                ]
                for line in lines
            ],
        ]
        for pk, lines in sorted(lines_by_webhook.items())
    ]
    raw = json.dumps(parts, sort_keys=True).encode()
    return hashlib.blake2b(raw, digest_size=6).hexdigest()


# --- DLQ drain ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainEstimate:
    count: int
    seconds: float | None  # None: nothing to drain
    rate: float  # leads per second, all told
    limited_by: str  # what sets the pace

    @property
    def under_a_second(self) -> bool:
        return self.seconds is not None and self.seconds < 1


def dlq_drain_estimate(
    *, webhook_id: int | None = None, error_class: str | None = None, drain_rate: float
) -> DrainEstimate:
    """How long a DLQ drain of the pending entries (filtered as the drain is) takes: the drain moves
    at most `drain_rate` leads per second (clayops.dlq), and each lead then waits for its workspace's
    rate-limit token (Workspace.rate_limit; 0 is unlimited). The slower of the two sets the pace."""
    qs = DeadLetter.objects.filter(state=DeadLetter.State.PENDING)
    if webhook_id:
        qs = qs.filter(webhook_id=webhook_id)
    if error_class:
        qs = qs.filter(error_class=error_class)
    rows = list(
        qs.order_by()
        .values_list("webhook__workspace__name", "webhook__workspace__rate_limit")
        .annotate(n=Count("*"))
    )
    count = sum(n for _, _, n in rows)
    if not count:
        return DrainEstimate(0, None, drain_rate, "")
    seconds = count / drain_rate if drain_rate > 0 else 0.0
    limited_by = f"the drain rate ({drain_rate:g}/s)" if drain_rate > 0 else ""
    for name, rate, n in rows:
        if name is not None and rate and n / rate > seconds:
            seconds = n / rate
            limited_by = f"workspace {name}'s rate limit ({rate:g}/s)"
    rate = count / seconds if seconds > 0 else drain_rate
    return DrainEstimate(count, seconds, rate, limited_by)
