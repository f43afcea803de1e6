"""What an operator does with leads whose outcome clayops cannot know by itself: accepted by Clay
but no callback by the deadline (`overdue`), or sent with no answer (`uncertain`); and with leads
given a degraded answer while Clay could not take them (`served_cache`, `served_fallback`).

  wait longer     overdue → accepted, with a new callback deadline
  resend          overdue / uncertain → queued: through every guard again, reserving its own credits
                  (an uncertain lead's first send is booked first as one Clay may have charged)
  mark delivered  overdue / uncertain → delivered (final; a late callback still enriches it)
  re-enrich       served_cache / served_fallback → queued: sent to Clay for real data, through every
                  guard (webhooks with reenrich_served do this by themselves after new work)

Each is one conditional UPDATE on the lead's state, so a lead another worker or a late callback
moved meanwhile is left alone, and each is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count
from django.utils import timezone

from .. import budget
from ..models import AuditEntry, CreditBudget, Lead, Webhook
from .recovery import resend_uncertain
from .transitions import S, requeue

UNKNOWN_OUTCOME = (S.OVERDUE, S.UNCERTAIN)
SERVED = (S.SERVED_CACHE, S.SERVED_FALLBACK)
RESOLVABLE = (*UNKNOWN_OUTCOME, *SERVED)
ACTIONS = ("wait", "resend", "deliver", "reenrich")
# What each action may be asked of: the page offers only these; anything else is refused (400).
ALLOWED: dict[str, tuple[str, ...]] = {
    S.OVERDUE: ("wait", "resend", "deliver"),
    S.UNCERTAIN: ("resend", "deliver"),
    S.SERVED_CACHE: ("reenrich",),
    S.SERVED_FALLBACK: ("reenrich",),
}
# One operator action moves at most this many leads (the page offers it again for the rest).
MAX_PER_ACTION = 10_000


def select(*, state: str, webhook_id: int | None = None, lead_ids: Sequence[int] = ()) -> list[int]:
    """The leads an action applies to: the ids given, else every lead in `state` (of the webhook)."""
    if state not in RESOLVABLE:
        return []
    qs = Lead.objects.filter(state=state)
    if lead_ids:
        qs = qs.filter(pk__in=list(lead_ids))
    if webhook_id is not None:
        qs = qs.filter(webhook_id=webhook_id)
    return list(qs.order_by("pk").values_list("pk", flat=True)[:MAX_PER_ACTION])


def resend_forecast(lead_ids: Sequence[int], *, now: datetime | None = None) -> dict:
    """What resending these leads costs: leads, credits and Clay Actions at their webhooks' estimates,
    and what the budgets they spend from have left today (Actions: of the budgets with a limit)."""
    now = now or timezone.now()
    rows = (
        Lead.objects.filter(pk__in=list(lead_ids))
        .values("webhook__credits_per_row", "webhook__actions_per_row", "webhook__workspace__budget_id")
        .annotate(n=Count("id"))
    )
    credits, actions = Decimal("0"), 0
    budgets: set[int] = set()
    for row in rows:
        credits += Webhook.estimate(row["webhook__credits_per_row"]) * row["n"]
        actions += (row["webhook__actions_per_row"] or 0) * row["n"]
        if row["webhook__workspace__budget_id"]:
            budgets.add(row["webhook__workspace__budget_id"])
    found = list(CreditBudget.objects.filter(pk__in=budgets))
    remaining = sum((b.remaining(now) for b in found), Decimal("0"))
    limited = [left for b in found if (left := b.actions_remaining(now)) is not None]
    actions_left = sum(limited) if limited else None
    fits = credits <= remaining and (actions_left is None or actions <= actions_left)
    return {
        "count": len(lead_ids),
        "credits": credits,
        "remaining": remaining,
        "actions": actions,
        "actions_remaining": actions_left,
        "fits": fits,
    }


def wait_longer(*, lead_ids: Sequence[int], by=None, now: datetime | None = None) -> int:
    """Overdue leads wait for their callback again, for their webhook's callback deadline."""
    now = now or timezone.now()
    moved = 0
    hooks = Webhook.objects.filter(leads__pk__in=list(lead_ids), leads__state=S.OVERDUE).distinct()
    for webhook_id, deadline in hooks.values_list("pk", "callback_deadline_seconds"):
        moved += Lead.objects.filter(pk__in=list(lead_ids), state=S.OVERDUE, webhook_id=webhook_id).update(
            state=S.ACCEPTED, state_changed_at=now, next_attempt_at=now + timedelta(seconds=deadline)
        )
    _audit("overdue_wait", moved, by)
    return moved


def resend(*, lead_ids: Sequence[int], by=None, now: datetime | None = None) -> int:
    """Send again, through the budget, the breaker and the rate limit like any first send."""
    ids = list(lead_ids)
    forecast = resend_forecast(ids, now=now)
    moved = len(resend_uncertain(ids, now=now)) + len(requeue(ids, from_states=[S.OVERDUE]))
    _audit("lead_resend", moved, by, credits_forecast=str(forecast["credits"]))
    return moved


def mark_delivered(*, lead_ids: Sequence[int], by=None, now: datetime | None = None) -> int:
    """Clay took these rows, the operator says; no data will be waited for. An uncertain lead's
    credit hold is booked as spent (Clay charged it, by that account)."""
    now = now or timezone.now()
    ids = list(
        Lead.objects.filter(pk__in=list(lead_ids), state__in=UNKNOWN_OUTCOME).values_list("pk", flat=True)
    )
    budget.settle_held_for_leads(
        Lead.objects.filter(pk__in=ids, state=S.UNCERTAIN).values_list("pk", flat=True), now=now
    )
    moved = Lead.objects.filter(pk__in=ids, state__in=UNKNOWN_OUTCOME).update(
        state=S.DELIVERED, state_changed_at=now, next_attempt_at=None, defer_reason=""
    )
    _audit("lead_mark_delivered", moved, by)
    return moved


def reenrich(*, lead_ids: Sequence[int], by=None, now: datetime | None = None) -> int:
    """Leads served from the cache or the fallback go to Clay for real data: back to the queue, through
    the budget, the breaker and the rate limit like any first send. Their served answer stays on
    the lead (the lead page shows where its data came from) until Clay's callback enriches it."""
    ids = list(lead_ids)
    forecast = resend_forecast(ids, now=now)
    moved = len(requeue(ids, from_states=list(SERVED)))
    _audit("lead_reenrich", moved, by, credits_forecast=str(forecast["credits"]))
    return moved


def resolve(*, action: str, lead_ids: Sequence[int], by=None) -> int:
    """The operator's choice by name (ACTIONS)."""
    handler = {"wait": wait_longer, "resend": resend, "deliver": mark_delivered, "reenrich": reenrich}[action]
    return handler(lead_ids=lead_ids, by=by)


def _audit(action: str, count: int, by, **detail) -> None:
    AuditEntry.objects.create(user=by, action=action, target="leads", count=count, detail=detail)
