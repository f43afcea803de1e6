"""Daily credit budget: reserve before sending, settle after, never overspend.

Invariant: for a budget and day, reserved + spent <= daily_limit at every moment, whatever the
number of workers. `reserve` is ONE conditional UPDATE (`... WHERE reserved + spent + n <= limit`)
whose row count says whether it succeeded: the database serialises concurrent reservations on the
row, on SQLite (IMMEDIATE transactions) and on PostgreSQL alike; nothing is read-then-written in
Python.

Life of a reservation: held → settled (Clay answered 2xx: the row will be charged) → its actual
cost recorded when Clay's callback reports it (spent is adjusted by the difference); or held →
released (not sent, or Clay refused it). A held reservation whose job died expires and is released
by the reaper. `spent` always reflects what Clay charged: if Clay charges more than the estimate,
spent may pass the limit; further reservations are then refused until the next day or a higher limit.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.utils import timezone

from .models import AuditEntry, CreditBudget, CreditReservation, CreditUsage

log = logging.getLogger("clayops.budget")
R = CreditReservation.State


def usage_for(budget: CreditBudget, *, now: datetime | None = None) -> CreditUsage:
    """Today's usage row (the day in the budget's own time zone), created on first use."""
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
    usage = usage_for(budget, now=now)
    return budget.daily_limit - usage.reserved - usage.spent


def reserve(
    *,
    budget: CreditBudget,
    amount: Decimal,
    lead=None,
    now: datetime | None = None,
    ttl_seconds: int | None = None,
) -> CreditReservation | None:
    """Hold `amount` credits of today's budget, or return None if that would pass the limit."""
    now = now or timezone.now()
    amount = Decimal(amount)
    usage = usage_for(budget, now=now)
    ttl = ttl_seconds if ttl_seconds is not None else settings.CLAYOPS_RESERVATION_TTL_SECONDS
    with transaction.atomic():
        # The limit is read in the same statement (subquery), so a limit change applies at once.
        limit = CreditBudget.objects.filter(pk=budget.pk).values("daily_limit")
        took = CreditUsage.objects.filter(
            pk=usage.pk, reserved__lte=limit[:1] - F("spent") - Value(amount)
        ).update(reserved=F("reserved") + amount)
        if not took:
            return None
        return CreditReservation.objects.create(
            usage=usage, lead=lead, amount=amount, created_at=now, expires_at=now + timedelta(seconds=ttl)
        )


def settle(*, reservation_id: int, amount: Decimal | None = None, now: datetime | None = None) -> bool:
    """held → settled: the reserved credits become spent (at `amount`, default the estimate)."""
    now = now or timezone.now()
    with transaction.atomic():
        reservation = CreditReservation.objects.filter(pk=reservation_id).first()
        if reservation is None:
            return False
        charged = reservation.amount if amount is None else Decimal(amount)
        if not CreditReservation.objects.filter(pk=reservation_id, state=R.HELD).update(
            state=R.SETTLED, actual=charged if amount is not None else None, closed_at=now
        ):
            return False
        CreditUsage.objects.filter(pk=reservation.usage_id).update(
            reserved=F("reserved") - reservation.amount, spent=F("spent") + charged
        )
    _check_alert(reservation.usage_id, now=now)
    return True


def release(*, reservation_id: int, now: datetime | None = None) -> bool:
    """held → released: the credits go back to the budget."""
    now = now or timezone.now()
    with transaction.atomic():
        reservation = CreditReservation.objects.filter(pk=reservation_id).only("amount", "usage_id").first()
        if reservation is None:
            return False
        if not CreditReservation.objects.filter(pk=reservation_id, state=R.HELD).update(
            state=R.RELEASED, closed_at=now
        ):
            return False
        CreditUsage.objects.filter(pk=reservation.usage_id).update(
            reserved=F("reserved") - reservation.amount
        )
    return True


def record_actual(*, reservation_id: int, actual: Decimal, now: datetime | None = None) -> bool:
    """Clay's callback reported the real cost. Applied once per reservation; repeats change nothing."""
    now = now or timezone.now()
    actual = Decimal(actual)
    reservation = CreditReservation.objects.filter(pk=reservation_id).first()
    if reservation is None or reservation.actual is not None:
        return False
    if reservation.state == R.HELD and settle(reservation_id=reservation_id, amount=actual, now=now):
        return True
    with transaction.atomic():
        # Settled at the estimate: spend the difference. Released (reaped) but charged: spend it all.
        claimed = CreditReservation.objects.filter(pk=reservation_id, actual__isnull=True).exclude(
            state=R.HELD
        )
        current = claimed.first()
        if current is None or not claimed.update(actual=actual):
            return False
        delta = actual - current.amount if current.state == R.SETTLED else actual
        if delta:
            CreditUsage.objects.filter(pk=current.usage_id).update(spent=F("spent") + delta)
    _check_alert(current.usage_id, now=now)
    return True


def reap_expired(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Release held reservations past their expiry (their job died). Returns how many."""
    now = now or timezone.now()
    ids = list(
        CreditReservation.objects.filter(state=R.HELD, expires_at__lt=now).values_list("pk", flat=True)[
            :limit
        ]
    )
    return sum(1 for pk in ids if release(reservation_id=pk, now=now))


def set_daily_limit(*, budget: CreditBudget, limit: Decimal, by=None) -> None:
    old = CreditBudget.objects.values_list("daily_limit", flat=True).get(pk=budget.pk)
    CreditBudget.objects.filter(pk=budget.pk).update(daily_limit=limit, updated_at=timezone.now())
    budget.daily_limit = Decimal(limit)
    AuditEntry.objects.create(
        user=by,
        action="budget_limit_change",
        target=f"budget:{budget.pk} {budget}",
        detail={"from": str(old), "to": str(limit)},
    )


def _check_alert(usage_id: int, *, now: datetime) -> None:
    """Soft alert once a day when spend passes the budget's alert percentage: event and log line."""
    usage = CreditUsage.objects.select_related("budget").filter(pk=usage_id, alerted_at__isnull=True).first()
    if usage is None or usage.budget.daily_limit <= 0:
        return
    share = usage.spent * 100 / usage.budget.daily_limit
    if share < usage.budget.alert_percent:
        return
    if CreditUsage.objects.filter(pk=usage_id, alerted_at__isnull=True).update(alerted_at=now):
        log.warning(
            "budget %s: %.0f%% of today's %s credits spent", usage.budget, share, usage.budget.daily_limit
        )
        AuditEntry.objects.create(
            action="budget_alert",
            target=f"budget:{usage.budget_id} {usage.budget}",
            detail={
                "spent": str(usage.spent),
                "limit": str(usage.budget.daily_limit),
                "percent": round(float(share), 1),
            },
        )
