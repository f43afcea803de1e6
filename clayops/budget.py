"""Daily credit budget: reserve before sending, settle after, never overspend.

Invariant: for a budget and day, reserved + spent <= daily_limit at every moment, whatever the
number of workers. `reserve` is ONE conditional UPDATE (`... WHERE reserved + spent + n <= limit`,
the limit read by a subquery in the same statement) whose row count says whether it succeeded: the
database serialises concurrent reservations on the usage row (SQLite: IMMEDIATE transactions take
the write lock at BEGIN; PostgreSQL: the row lock, with the WHERE re-checked on the updated row),
so nothing is read-then-written in Python.

Life of a reservation:
  held → settled    Clay answered 2xx: the row will be charged (reserved → spent, at the estimate);
  held → released   not sent, or Clay refused it; or its job died and the reaper freed it;
  actual recorded   Clay's callback reported the real cost: spent is corrected by the difference once.
A reservation released by the reaper whose row Clay took after all (a slow worker got its 2xx, or
the callback reports a cost) is charged then: `spent` always reflects what Clay charges. That means
spent may pass the limit (Clay charged more than estimated, or a reaped row was charged); the
invariant above then holds in its useful form: no NEW reservation succeeds until the next day or a
higher limit.

A reservation belongs to the day it was made: settled after midnight, it still counts on the day
that reserved it (its usage row), so each day's reserved column returns to 0.

SQLite stores decimals as floating point: every arithmetic UPDATE rounds to the cents in SQL, so
sums do not drift (a drift below zero would break the `reserved >= 0` check constraint).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import DecimalField, F, Q, Subquery, Value
from django.db.models.functions import Round
from django.utils import timezone

from .enqueue import alert_check
from .models import AuditEntry, CreditBudget, CreditReservation, CreditUsage

log = logging.getLogger("clayops.budget")
R = CreditReservation.State
CENTS = Decimal("0.01")
CREDITS = DecimalField(max_digits=14, decimal_places=2)


def _credits(value, *, name: str = "amount") -> Decimal:
    """A credit amount as an exact Decimal to the cent; refuses negatives, NaN and garbage."""
    try:
        amount = Decimal(str(value)).quantize(CENTS)
    except (InvalidOperation, ValueError, TypeError):
        raise ValueError(f"{name} must be a number of credits, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{name} must be a non-negative number of credits, got {value!r}")
    return amount


def _plus(field: str, amount: Decimal) -> Round:
    """`field + amount`, rounded to the cent in SQL (exact on PostgreSQL, no float drift on SQLite)."""
    return Round(F(field) + Value(amount, output_field=CREDITS), 2)


def usage_for(budget: CreditBudget, *, now: datetime | None = None) -> CreditUsage:
    """Today's usage row (the day in the budget's own time zone), created on first use.

    Creation is race-safe: two workers creating the same day's row both end up with the one row
    (the unique constraint refuses the second insert, which then reads the winner's row).
    """
    day = budget.day_for(now)
    usage = CreditUsage.objects.filter(budget=budget, day=day).first()
    if usage is not None:
        return usage
    try:
        with transaction.atomic():
            return CreditUsage.objects.create(budget=budget, day=day)
    except IntegrityError:  # another worker created it first
        return CreditUsage.objects.get(budget=budget, day=day)


def remaining(budget: CreditBudget, *, now: datetime | None = None) -> Decimal:
    """Credits that may still be reserved today (never below 0). Same as `budget.remaining(now)`."""
    return budget.remaining(now)


def _hold(usage: CreditUsage, budget: CreditBudget, total: Decimal, actions: int = 0) -> bool:
    """reserved += total (and actions_reserved += actions), only if reserved + spent + total stays
    within the credit limit and, where the budget has one, the Actions used stay within the Actions
    limit: ONE conditional UPDATE whose row count says whether it held. The limits are read in the
    same statement, so a limit change applies at once to every worker."""
    this = CreditBudget.objects.filter(pk=budget.pk).order_by()
    limit = Subquery(this.values("daily_limit")[:1])
    actions_limit = Subquery(this.values("actions_daily_limit")[:1])
    changes: dict[str, Any] = {"reserved": _plus("reserved", total)}
    fits_actions = Q()  # a row that uses no Actions is never refused by their limit
    if actions:
        fits_actions = Q(actions_limit__isnull=True) | Q(actions_after__lte=F("actions_limit"))
        changes["actions_reserved"] = F("actions_reserved") + actions
    return (
        CreditUsage.objects.filter(pk=usage.pk)
        .alias(
            after=Round(F("reserved") + F("spent") + Value(total, output_field=CREDITS), 2),
            actions_after=F("actions_reserved") + F("actions_spent") + Value(actions),
            actions_limit=actions_limit,
        )
        .filter(fits_actions, after__lte=limit)
        .update(**changes)
        == 1
    )


def record_saved(budget: CreditBudget, amount: Decimal, *, now: datetime | None = None) -> None:
    """Count credits today's budget did not spend: leads served from a fresh cache entry instead of a
    send (cache-aware sending). A counter only: the limit, the reservations and `spent` are untouched."""
    amount = _credits(amount)
    if amount <= 0:
        return
    usage = usage_for(budget, now=now or timezone.now())
    CreditUsage.objects.filter(pk=usage.pk).update(saved=F("saved") + amount)


def reserve(
    *,
    budget: CreditBudget,
    amount: Decimal,
    lead=None,
    actions: int = 0,
    now: datetime | None = None,
    ttl_seconds: int | None = None,
) -> CreditReservation | None:
    """Hold `amount` credits (and `actions` Clay Actions) of today's budget, or return None if that
    would pass a limit.

    The reservation expires after `ttl_seconds` (default CLAYOPS_RESERVATION_TTL_SECONDS): if its
    job dies before settling or releasing it, `reap_expired` gives the credits back.
    """
    now = now or timezone.now()
    amount = _credits(amount)
    ttl = settings.CLAYOPS_RESERVATION_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    usage = usage_for(budget, now=now)
    with transaction.atomic():
        if not _hold(usage, budget, amount, actions):
            return None
        return CreditReservation.objects.create(
            usage=usage,
            lead=lead,
            amount=amount,
            actions=actions,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
        )


def reserve_many(
    *,
    budget: CreditBudget,
    amount: Decimal,
    lead_ids: list[int],
    actions: int = 0,
    now: datetime | None = None,
    ttl_seconds: int | None = None,
) -> dict[int, int]:
    """Hold `amount` credits (and `actions` Clay Actions) for each of `lead_ids`, as many as today's
    budget allows, in list order.

    Returns {lead id: reservation id} for the leads that got one (the first k of the list). The
    hold for all k is ONE conditional UPDATE of the usage row, as in reserve(); when the whole list
    does not fit, it asks again for as many as fit. The reservations are inserted in one statement,
    in the same transaction as the UPDATE.
    """
    now = now or timezone.now()
    amount = _credits(amount)
    ttl = settings.CLAYOPS_RESERVATION_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    usage = usage_for(budget, now=now)
    want = len(lead_ids)
    expires = now + timedelta(seconds=ttl)
    while want > 0:
        with transaction.atomic():
            if _hold(usage, budget, amount * want, actions * want):
                made = CreditReservation.objects.bulk_create(
                    CreditReservation(
                        usage=usage,
                        lead_id=pk,
                        amount=amount,
                        actions=actions,
                        created_at=now,
                        expires_at=expires,
                    )
                    for pk in lead_ids[:want]
                )
                if want < len(lead_ids):
                    alert_check("budgets")  # the limit refused some: budget_100 now, not next tick
                return {r.lead_id: r.pk for r in made if r.lead_id is not None}
        fits = room(CreditBudget.objects.get(pk=budget.pk), amount, actions, now=now)
        want = min(want - 1, 0 if fits is None else fits)  # free on both meters yet refused: past a limit
        # `want` always shrinks: a racing worker cannot keep us looping
    alert_check("budgets")
    return {}


def room(
    budget: CreditBudget, amount: Decimal, actions: int = 0, *, now: datetime | None = None
) -> int | None:
    """How many rows of `amount` credits and `actions` Clay Actions each today's limits still allow;
    None when neither meter limits them (free rows, or no Actions limit for rows that cost none)."""
    fits = []
    if amount > 0:
        fits.append(int(remaining(budget, now=now) // amount))
    left = budget.actions_remaining(now)
    if actions > 0 and left is not None:
        fits.append(left // actions)
    return min(fits) if fits else None


def _close_held(reservation_ids, *, state: str, now: datetime) -> list[int]:
    """held → `state` for these reservations, with the usage rows adjusted, in one transaction.

    The held rows are locked (PostgreSQL: FOR UPDATE, in id order; SQLite: the IMMEDIATE
    transaction's write lock) so a reaper releasing one at the same moment cannot be counted twice.
    Returns the ids moved; those not held are left to the caller.
    """
    with transaction.atomic():
        held = list(
            CreditReservation.objects.select_for_update()
            .filter(pk__in=list(reservation_ids), state=R.HELD)
            .order_by("pk")
            .values_list("pk", "usage_id", "amount", "actions")
        )
        if not held:
            return []
        fields = {"state": state, "closed_at": now}
        if state == R.SETTLED:
            fields["charged"] = F("amount")
        CreditReservation.objects.filter(pk__in=[row[0] for row in held], state=R.HELD).update(**fields)
        per_usage: dict[int, tuple[Decimal, int]] = {}
        for _, usage_id, held_amount, held_actions in held:
            total, actions = per_usage.get(usage_id, (Decimal("0"), 0))
            per_usage[usage_id] = (total + held_amount, actions + held_actions)
        for usage_id, (total, actions) in per_usage.items():
            changes: dict[str, Any] = {"reserved": _plus("reserved", -total)}
            if actions:
                changes["actions_reserved"] = F("actions_reserved") - actions
            if state == R.SETTLED:
                changes["spent"] = _plus("spent", total)
                if actions:
                    changes["actions_spent"] = F("actions_spent") + actions
            CreditUsage.objects.filter(pk=usage_id).update(**changes)
    if state == R.SETTLED:
        for usage_id in per_usage:
            check_alert(usage_id, now=now)
    return [row[0] for row in held]


def settle_many(reservation_ids, *, now: datetime | None = None) -> int:
    """settle() at the estimate for many reservations at once (Clay took their rows). Returns how many.

    Held ones move in one statement per table; any already released (reaped while the request was
    out) are charged one by one, as settle() does.
    """
    now = now or timezone.now()
    ids = list(reservation_ids)
    moved = set(_close_held(ids, state=R.SETTLED, now=now))
    late = sum(1 for pk in ids if pk not in moved and settle(reservation_id=pk, now=now))
    return len(moved) + late


def release_many(reservation_ids, *, now: datetime | None = None) -> int:
    """release() for many held reservations at once (their rows were not sent). Returns how many."""
    return len(_close_held(list(reservation_ids), state=R.RELEASED, now=now or timezone.now()))


def extend_holds(reservation_ids, *, until: datetime) -> int:
    """Keep held reservations until `until` (an uncertain send waits for its callback). Returns how many."""
    held = CreditReservation.objects.filter(pk__in=list(reservation_ids), state=R.HELD)
    return held.update(expires_at=until)


def _held_by(lead_ids):
    """The reservations these leads still hold."""
    return CreditReservation.objects.filter(lead_id__in=list(lead_ids), state=R.HELD)


def extend_holds_for_leads(lead_ids, *, until: datetime) -> int:
    """extend_holds() for whatever these leads hold."""
    return _held_by(lead_ids).update(expires_at=until)


def release_for_leads(lead_ids, *, now: datetime | None = None) -> int:
    """Release whatever these leads hold (they go back to the queue unsent). Returns how many."""
    return release_many(list(_held_by(lead_ids).values_list("pk", flat=True)), now=now)


def settle_held_for_leads(lead_ids, *, doubtful: bool = False, now: datetime | None = None) -> int:
    """Book whatever these leads hold as spent, at the estimate. `doubtful`: a send Clay may or may
    not have taken (an uncertain send being resent); see release_doubtful()."""
    held = list(_held_by(lead_ids).values_list("pk", flat=True))
    settled = settle_many(held, now=now)
    if doubtful and held:
        unreported = CreditReservation.objects.filter(pk__in=held, state=R.SETTLED, actual__isnull=True)
        unreported.update(doubtful=True)
    return settled


def release_doubtful(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Take doubtful sends off the books once it is clear Clay never took them: their lead was
    enriched by another send more than CLAYOPS_UNCERTAIN_GRACE_SECONDS ago and no callback named
    them. A callback that still comes charges them again (record_actual on a released send).
    Returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS)
    rows = list(
        CreditReservation.objects.filter(
            doubtful=True,
            state=R.SETTLED,
            actual__isnull=True,
            lead__enriched_at__lt=cutoff,
        ).values_list("pk", "usage_id", "charged", "actions")[:limit]
    )
    released = 0
    for pk, usage_id, charged, actions in rows:
        with transaction.atomic():
            if not CreditReservation.objects.filter(
                pk=pk, doubtful=True, state=R.SETTLED, actual__isnull=True
            ).update(state=R.RELEASED, charged=None, closed_at=now):
                continue
            CreditUsage.objects.filter(pk=usage_id).update(
                spent=_plus("spent", -(charged or Decimal("0"))), actions_spent=F("actions_spent") - actions
            )
            released += 1
    return released


def settle_for_lead(
    lead_id: int, *, actual: Decimal | None, send_id: int | None = None, now: datetime | None = None
) -> bool:
    """Clay's callback for a lead: the send it reports on (`send_id`, the reservation clayops put in
    the row; else the lead's latest) is charged at `actual` when the callback reports a figure, else
    settled at the estimate if still held. Returns whether anything changed."""
    sends = CreditReservation.objects.filter(lead_id=lead_id)
    if send_id is not None:
        sends = sends.filter(pk=send_id)
    reservation = sends.order_by("-id").values("pk", "state").first()
    if reservation is None:
        return False
    if actual is not None:
        return record_actual(reservation_id=reservation["pk"], actual=actual, now=now)
    if reservation["state"] == R.HELD:
        return settle(reservation_id=reservation["pk"], now=now)
    return False


def settle(*, reservation_id: int, amount: Decimal | None = None, now: datetime | None = None) -> bool:
    """Clay took the row (2xx): the reservation's credits become spent, at `amount` (default: the estimate).

    held → settled: reserved -= the held amount, spent += amount. A reservation already released
    (the reaper freed it while a slow request was still out) is charged too: spent += amount.
    Idempotent: only the call whose conditional UPDATE moved the state returns True.
    """
    now = now or timezone.now()
    with transaction.atomic():
        row = _reservation_row(reservation_id)
        if row is None:
            return False
        charge = row["amount"] if amount is None else _credits(amount)
        usage = CreditUsage.objects.filter(pk=row["usage_id"])
        if CreditReservation.objects.filter(pk=reservation_id, state=R.HELD).update(
            state=R.SETTLED, charged=charge, closed_at=now
        ):
            usage.update(**_held_to_spent(row, charge))
        elif CreditReservation.objects.filter(pk=reservation_id, state=R.RELEASED).update(
            state=R.SETTLED, charged=charge
        ):
            usage.update(spent=_plus("spent", charge), actions_spent=F("actions_spent") + row["actions"])
        else:
            return False
    check_alert(row["usage_id"], now=now)
    return True


def _reservation_row(reservation_id: int) -> Any:
    return CreditReservation.objects.filter(pk=reservation_id).values("usage_id", "amount", "actions").first()


def _held_to_spent(row: Any, charge: Decimal) -> dict:
    """The usage changes of a held reservation Clay took: its hold goes, `charge` credits and its
    Actions are spent."""
    return {
        "reserved": _plus("reserved", -row["amount"]),
        "spent": _plus("spent", charge),
        "actions_reserved": F("actions_reserved") - row["actions"],
        "actions_spent": F("actions_spent") + row["actions"],
    }


def release(*, reservation_id: int, now: datetime | None = None) -> bool:
    """held → released: the credits go back to the budget. Idempotent (True only for the call that did it)."""
    now = now or timezone.now()
    with transaction.atomic():
        row = _reservation_row(reservation_id)
        if row is None:
            return False
        if not CreditReservation.objects.filter(pk=reservation_id, state=R.HELD).update(
            state=R.RELEASED, closed_at=now
        ):
            return False
        CreditUsage.objects.filter(pk=row["usage_id"]).update(
            reserved=_plus("reserved", -row["amount"]),
            actions_reserved=F("actions_reserved") - row["actions"],
        )
    return True


def record_actual(*, reservation_id: int, actual: Decimal, now: datetime | None = None) -> bool:
    """Clay's callback reported the real cost of the row. Applied once; a repeat changes nothing.

    held: settled at `actual`. settled: spent += actual - what settling charged. released (reaped,
    yet Clay charged): spent += actual. Returns True only for the call that applied it.
    """
    now = now or timezone.now()
    actual = _credits(actual, name="actual")
    with transaction.atomic():
        # The claim: `actual` is written once. On PostgreSQL this UPDATE also locks the row until
        # commit, so a concurrent settle() waits and then finds the state this call leaves.
        if not CreditReservation.objects.filter(pk=reservation_id, actual__isnull=True).update(actual=actual):
            return False
        row = CreditReservation.objects.values("usage_id", "amount", "actions", "charged", "state").get(
            pk=reservation_id
        )
        this = CreditReservation.objects.filter(pk=reservation_id)
        usage = CreditUsage.objects.filter(pk=row["usage_id"])
        if row["state"] == R.HELD:
            this.update(state=R.SETTLED, charged=actual, closed_at=now)
            usage.update(**_held_to_spent(row, actual))
        elif row["state"] == R.SETTLED:
            already = row["charged"] if row["charged"] is not None else row["amount"]
            this.update(charged=actual)
            if actual != already:
                usage.update(spent=_plus("spent", actual - already))
        else:  # released, but Clay enriched (and charged) the row anyway
            this.update(state=R.SETTLED, charged=actual)
            usage.update(spent=_plus("spent", actual), actions_spent=F("actions_spent") + row["actions"])
    check_alert(row["usage_id"], now=now)
    return True


def reap_expired(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Release held reservations past their expiry (their job died). Returns how many.

    Safe to run in several processes at once: each release is a conditional UPDATE.
    """
    now = now or timezone.now()
    ids = list(
        CreditReservation.objects.filter(state=R.HELD, expires_at__lt=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for pk in ids if release(reservation_id=pk, now=now))


def set_daily_limit(*, budget: CreditBudget, limit: Decimal, by=None) -> None:
    """Change the daily limit (at once, for every worker) and write it to the audit log.

    Lowering it below what is already reserved and spent today cancels nothing: held reservations
    stand, and new ones are refused until spend falls under the new limit (the next day).
    """
    limit = _credits(limit, name="limit")
    now = timezone.now()
    with transaction.atomic():
        old = CreditBudget.objects.values_list("daily_limit", flat=True).get(pk=budget.pk)
        CreditBudget.objects.filter(pk=budget.pk).update(daily_limit=limit, updated_at=now)
        AuditEntry.objects.create(
            user=by,
            action="budget_limit_change",
            target=f"budget:{budget.pk} {budget}",
            detail={"from": str(old), "to": str(limit)},
            at=now,
        )
    budget.daily_limit = limit


def check_alert(usage: CreditUsage | int, *, now: datetime | None = None) -> bool:
    """Soft alert, once per budget and day, when spent reaches alert_percent of the limit.

    The "once" is a conditional UPDATE of alerted_at (IS NULL → now): of any number of workers
    crossing the threshold together, one writes the audit entry and logs the warning. Only spent
    counts (reserved credits may still be released). Returns True for the call that fired it.
    """
    now = now or timezone.now()
    usage_id = usage if isinstance(usage, int) else usage.pk
    budget = CreditBudget.objects.filter(usage__pk=usage_id).first()
    if budget is None or budget.daily_limit <= 0:
        return False
    threshold = (budget.daily_limit * budget.alert_percent / 100).quantize(CENTS)
    if not CreditUsage.objects.filter(pk=usage_id, alerted_at__isnull=True, spent__gte=threshold).update(
        alerted_at=now
    ):
        return False
    current = CreditUsage.objects.get(pk=usage_id)
    share = float(current.spent * 100 / budget.daily_limit)
    log.warning(
        "budget %s: %.0f%% of the daily limit spent on %s (%s of %s credits)",
        budget,
        share,
        current.day,
        current.spent,
        budget.daily_limit,
    )
    AuditEntry.objects.create(
        action="budget_alert",
        target=f"budget:{budget.pk} {budget}",
        detail={
            "day": current.day.isoformat(),
            "spent": str(current.spent),
            "limit": str(budget.daily_limit),
            "percent": round(share, 1),
            "alert_percent": budget.alert_percent,
        },
        at=now,
    )
    return True
