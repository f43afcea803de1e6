"""Alerting: one notification when a condition starts, a reminder while it lasts, one when it ends.

An Alert row per occurrence of a (rule, target) problem, e.g. ("breaker_open", "webhook:3"). The
database decides who notifies, so any number of workers may evaluate at once without a storm:

- open:     INSERT, guarded by the conditional unique constraint "one open alert per rule and
            target" (alert_one_open). The worker whose INSERT succeeds sends "opened"; the others
            get an IntegrityError and do nothing more.
- reminder: `UPDATE … SET last_notified_at = now WHERE state = 'open' AND last_notified_at <= now -
            interval AND not acknowledged AND not muted`; the row count (1 for exactly one worker)
            decides who sends it.
- resolve:  `UPDATE … SET state = 'resolved' WHERE id = … AND state = 'open'`; the same.

Delivery is Apprise, to every active AlertChannel whose `rules` match, after the channel URL passed
the destination policy (channel_problem) and within the channel's hourly cap. Each attempt, refusal
or suppression is an AlertNotification row. Muted alerts notify nothing (not even "resolved") until
muted_until; acknowledged alerts get no reminders.

- reopen:   a problem that comes back within AlertSettings.reopen_minutes of its resolve reopens
            that alert (`UPDATE … SET state = 'open' WHERE id = … AND state = 'resolved'`, under
            the same constraint) and sends "reopened": one history per problem, as Hookdeck's issues.

Rules are level-based (evaluate()): each looks at the current state of breakers, health, budgets,
webhooks, imports and pauses, raises what holds and resolves what no longer does. The maintenance
tick evaluates them all; a transition (a breaker moving, a 429 or 402 pause, a webhook filling up,
an import failing, a reservation refused) also enqueues an evaluation of its own group at once
(enqueue.alert_check), so the notification does not wait for the tick. The no-tick and no-worker
rules (evaluate_liveness) are evaluated by `manage.py cron` too, since a missing tick cannot report
itself. Thresholds come from the admin's AlertSettings row (else the CLAYOPS_ALERT_* settings).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import apprise
from apprise.plugins.email.base import NotifyEmail
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q, Sum
from django.urls import reverse
from django.utils import timezone

from . import destinations, enqueue, health, liveness
from .alert_models import Alert, AlertChannel, AlertNotification, AlertSettings
from .models import (
    AuditEntry,
    CircuitBreaker,
    CreditBudget,
    CreditReservation,
    CreditUsage,
    DeadLetter,
    LeadImport,
    Webhook,
    Workspace,
)

log = logging.getLogger("clayops.alerts")
Kind = AlertNotification.Kind
OPEN = Alert.State.OPEN
ROW_THRESHOLDS = (80, 90, 100)
# Event rules: a thing that happened, not a condition that ends by itself. They stay open until an
# operator acknowledges them (acknowledging resolves them, without a "resolved" notification).
EVENT_RULES = ("import_failed",)
IMPORT_LOOKBACK = timedelta(hours=24)
SUPPRESSED = "suppressed: "
REFUSED = "refused: "


# --- the channel policy ------------------------------------------------------------------------


def _plugin(url: str):
    return apprise.Apprise.instantiate(url, suppress_exceptions=True)


def channel_problem(url: str) -> str | None:
    """Why clayops may not send to this Apprise URL, or None.

    Services at a host the URL names (json/xml/form webhooks, e-mail, ntfy, gotify, … : every Apprise
    plugin with a {host} template) must pass the destination policy: the host on
    CLAYOPS_ALERT_CHANNEL_HOSTS, no private, loopback, link-local or metadata address (literal or
    resolved) unless its network is in CLAYOPS_DESTINATION_PRIVATE_NETWORKS, and plain http only
    where CLAYOPS_DESTINATION_ALLOW_HTTP is set. E-mail is checked on its SMTP host. Services whose
    API host is fixed by Apprise (slack://, discord://, …) only need to be valid URLs.
    """
    plugin = _plugin(url)
    if plugin is None:
        return "not a valid Apprise URL (or an unsupported service)"
    if isinstance(plugin, NotifyEmail):
        host, port = plugin.smtp_host, plugin.port
    elif any("{host}" in template for template in getattr(plugin, "templates", ())):
        host = plugin.host
        port = plugin.port or (443 if plugin.secure else 80)
        if not plugin.secure and not settings.CLAYOPS_DESTINATION_ALLOW_HTTP:
            return "plain http is allowed in development only (use the service's secure scheme)"
    else:
        return None
    host = (host or "").strip("[]").rstrip(".")
    if not host:
        return "the URL has no host"
    if not destinations.host_allowed(host, settings.CLAYOPS_ALERT_CHANNEL_HOSTS):
        return f"host {host} is not an allowed alert destination (CLAYOPS_ALERT_CHANNEL_HOSTS)"
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return destinations.resolved_problem(host, int(port or 0))
    problem = destinations.address_problem(literal)
    return f"{host} is {problem}" if problem else None


def _send(url: str, title: str, body: str) -> tuple[bool, str]:
    """Send one notification; (ok, error). Refused by the policy: no connection is made."""
    problem = channel_problem(url)
    if problem:
        return False, REFUSED + problem
    plugin = _plugin(url)
    if hasattr(plugin, "redirects"):
        plugin.redirects = False  # a redirect could lead past the policy checked above
    with apprise.LogCapture(level=apprise.logging.WARNING) as captured:
        try:
            ok = bool(plugin.notify(title=title, body=body))
        except Exception as exc:  # a plugin bug must not stop the tick
            return False, f"{type(exc).__name__}: {exc}"[:500]
        logged = captured.getvalue().strip()
    return ok, "" if ok else (logged or "the service refused the notification")[-500:]


def send_to_channel(
    channel: AlertChannel, title: str, body: str, *, kind: str, alert: Alert | None = None, now=None
) -> AlertNotification:
    """One notification to one channel, within its hourly cap; logged in AlertNotification.

    The cap: the row is written first, then counted with the channel's other notifications of the
    last hour that were sent or being sent (by id, so racing workers agree who was first).
    """
    now = now or timezone.now()
    note = AlertNotification.objects.create(
        alert=alert, channel=channel, kind=kind, sent_at=now, error="sending"
    )
    taken = (
        AlertNotification.objects.filter(
            channel=channel, sent_at__gt=now - timedelta(hours=1), pk__lte=note.pk
        )
        .exclude(error__startswith=SUPPRESSED)
        .exclude(error__startswith=REFUSED)
        .count()
    )
    if taken > channel.max_per_hour:
        note.error = f"{SUPPRESSED}more than {channel.max_per_hour} notifications this hour"
    else:
        note.ok, note.error = _send(channel.url, title, body)
    note.save(update_fields=["ok", "error"])
    if not note.ok:
        log.warning("alert channel %s: %s not delivered: %s", channel, kind, note.error)
    return note


# --- open, remind, resolve ---------------------------------------------------------------------


def _link() -> str:
    return settings.CLAYOPS_PUBLIC_URL + reverse("dashboard:alerts")


def _deliver(alert: Alert, kind: str, *, now: datetime) -> int:
    """Notify every active channel that wants this rule. Returns the number delivered."""
    if alert.is_muted(now):
        return 0
    label: str = {
        Kind.OPENED.value: "OPEN",
        Kind.REMINDER.value: f"STILL OPEN (reminder {alert.reminders_sent})",
        Kind.RESOLVED.value: "RESOLVED",
        Kind.REOPENED.value: f"REOPENED ({alert.reopened}x)",
    }[kind]
    title = f"[clayops] {label}: {alert.title}"
    parts = [alert.resolve_message if kind == Kind.RESOLVED else alert.message]
    parts.append(
        f"Rule {alert.rule}, {alert.target}, severity {alert.severity}, "
        f"opened {alert.opened_at:%Y-%m-%d %H:%M:%S %Z}."
    )
    parts.append(_link())
    body = "\n\n".join(p for p in parts if p)
    sent = 0
    for channel in AlertChannel.objects.filter(is_active=True):
        if channel.wants(alert.rule):
            sent += send_to_channel(channel, title, body, kind=kind, alert=alert, now=now).ok
    return sent


def raise_alert(
    rule: str, target: str, title: str, message: str = "", *, severity: str = "warning", now=None
) -> Alert | None:
    """Open the alert unless it is open already (then a reminder may be due). Returns the alert this
    call opened, or None."""
    now = now or timezone.now()
    if not Alert.objects.filter(rule=rule, target=target, state=OPEN).exists():
        reopened = _reopen(rule, target, title, message, severity=severity, now=now)
        if reopened is not None:
            return reopened
        # A mute outlives a resolve: the same problem coming back within the mute stays quiet.
        muted = Alert.objects.filter(rule=rule, target=target).aggregate(m=Max("muted_until"))["m"]
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    rule=rule,
                    target=target,
                    title=title[:200],
                    message=message,
                    severity=severity,
                    opened_at=now,
                    last_notified_at=now,
                    muted_until=muted if muted and muted > now else None,
                )
        except IntegrityError:
            pass  # another worker opened it a moment ago: it notifies
        else:
            _deliver(alert, Kind.OPENED, now=now)
            return alert
    remind(rule, target, now=now)
    return None


def _reopen(rule: str, target: str, title: str, message: str, *, severity: str, now) -> Alert | None:
    """Reopen the alert of this problem if it resolved within the reopen window (not event rules,
    not what an operator acknowledged away). Returns it when this call reopened it."""
    window = AlertSettings.current().reopen_minutes
    if window <= 0 or rule in EVENT_RULES:
        return None
    last = (
        Alert.objects.filter(
            rule=rule,
            target=target,
            state=Alert.State.RESOLVED,
            resolved_at__gte=now - timedelta(minutes=window),
        )
        .order_by("-resolved_at", "-id")
        .first()
    )
    if last is None:
        return None
    try:
        with transaction.atomic():
            changed = Alert.objects.filter(pk=last.pk, state=Alert.State.RESOLVED).update(
                state=OPEN,
                resolved_at=None,
                resolve_message="",
                title=title[:200],
                message=message,
                severity=severity,
                # This occurrence's start: breaker_open_long counts from it, not from the first one.
                opened_at=now,
                last_notified_at=now,
                reopened=F("reopened") + 1,
                acknowledged_at=None,
                acknowledged_by=None,
            )
    except IntegrityError:
        return None  # another worker opened or reopened it a moment ago: it notifies
    if not changed:
        return None
    last.refresh_from_db()
    _deliver(last, Kind.REOPENED, now=now)
    return last


def remind(rule: str, target: str, *, now=None) -> bool:
    now = now or timezone.now()
    minutes = AlertSettings.current().reminder_minutes
    if minutes <= 0:
        return False
    due = Alert.objects.filter(
        rule=rule,
        target=target,
        state=OPEN,
        acknowledged_at__isnull=True,
        last_notified_at__lte=now - timedelta(minutes=minutes),
    ).exclude(muted_until__gt=now)
    if not due.update(last_notified_at=now, reminders_sent=F("reminders_sent") + 1):
        return False
    alert = Alert.objects.filter(rule=rule, target=target, state=OPEN).first()
    if alert is not None:
        _deliver(alert, Kind.REMINDER, now=now)
    return True


def resolve_alert(rule: str, target: str, message: str = "", *, now=None, notify: bool = True) -> bool:
    """Close the open alert; the one caller whose UPDATE changed the row sends "resolved"."""
    now = now or timezone.now()
    alert = Alert.objects.filter(rule=rule, target=target, state=OPEN).first()
    if alert is None:
        return False
    if not Alert.objects.filter(pk=alert.pk, state=OPEN).update(
        state=Alert.State.RESOLVED, resolved_at=now, resolve_message=message
    ):
        return False
    alert.refresh_from_db()
    if notify:
        _deliver(alert, Kind.RESOLVED, now=now)
    return True


# --- operators ---------------------------------------------------------------------------------


def acknowledge(alert_id: int, *, by, now=None) -> bool:
    """Stops the reminders (an event alert, e.g. import_failed, is resolved by it). Audited."""
    now = now or timezone.now()
    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return False
    changed = Alert.objects.filter(pk=alert_id, acknowledged_at__isnull=True).update(
        acknowledged_at=now, acknowledged_by=by
    )
    if changed and alert.rule in EVENT_RULES:
        Alert.objects.filter(pk=alert_id, state=OPEN).update(
            state=Alert.State.RESOLVED, resolved_at=now, resolve_message="acknowledged"
        )
    AuditEntry.objects.create(
        user=by,
        action="alert_ack",
        target=f"alert:{alert_id} {alert.rule} {alert.target}",
        detail={"changed": bool(changed)},
        at=now,
    )
    return bool(changed)


def mute(alert_id: int, *, minutes: int, by, now=None) -> bool:
    """No notification of this alert (and of its rule and target coming back) for `minutes`; 0
    unmutes. Audited."""
    now = now or timezone.now()
    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return False
    until = now + timedelta(minutes=minutes) if minutes > 0 else None
    Alert.objects.filter(pk=alert_id).update(muted_until=until)
    AuditEntry.objects.create(
        user=by,
        action="alert_mute",
        target=f"alert:{alert_id} {alert.rule} {alert.target}",
        detail={"minutes": minutes, "until": until.isoformat() if until else None},
        at=now,
    )
    return True


def send_test(channel: AlertChannel, *, by=None, now=None) -> AlertNotification:
    note = send_to_channel(
        channel,
        "[clayops] test notification",
        f"A test from clayops to the channel {channel.name}.\n\n{_link()}",
        kind=Kind.TEST,
        now=now,
    )
    AuditEntry.objects.create(
        user=by,
        action="alert_channel_test",
        target=f"alertchannel:{channel.pk} {channel}",
        detail={"ok": note.ok, "error": note.error},
    )
    return note


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    rule: str
    target: str
    title: str
    message: str = ""
    severity: str = "warning"


def budget_thresholds() -> list[int]:
    return AlertSettings.current().thresholds()


def _breakers(now: datetime) -> tuple[list[Condition], set[str]]:
    """breaker_open while a breaker is open or half-open (probing); breaker_open_long once it has
    been so for CLAYOPS_ALERT_BREAKER_OPEN_MINUTES (counted from the breaker_open alert, since every
    failed probe restarts the breaker's own opened_at). Forced open is an operator's pause (audited),
    not alerted."""
    found, checked = [], set()
    open_minutes = AlertSettings.current().breaker_open_minutes
    long_after = now - timedelta(minutes=open_minutes)
    for b in CircuitBreaker.objects.select_related("webhook"):
        target = f"webhook:{b.webhook_id}"
        checked.add(target)
        if b.state not in (CircuitBreaker.State.OPEN, CircuitBreaker.State.HALF_OPEN):
            continue
        found.append(
            Condition(
                "breaker_open",
                target,
                f"Breaker open: {b.webhook}",
                f"{b.webhook}: nothing is sent to Clay while its breaker is {b.state}; leads wait.",
                "critical",
            )
        )
        since = (
            Alert.objects.filter(rule="breaker_open", target=target, state=OPEN)
            .values_list("opened_at", flat=True)
            .first()
        )
        if since is not None and since <= long_after:
            found.append(
                Condition(
                    "breaker_open_long",
                    target,
                    f"Breaker still open: {b.webhook}",
                    f"{b.webhook}: open for more than {open_minutes} minutes.",
                    "critical",
                )
            )
    return found, checked


def _health(now: datetime) -> tuple[list[Condition], set[str]]:
    """health_degraded while not healthy (degraded or unhealthy), health_unhealthy while unhealthy."""
    hooks = {w.pk: w for w in Webhook.objects.filter(is_active=True)}
    found = []
    for pk, report in health.reports(hooks, now=now).items():
        target = f"webhook:{pk}"
        detail = f"{hooks[pk]}: success rate {report.score} % over 5 minutes ({report.failures} failures)."
        if report.status != "healthy":
            found.append(Condition("health_degraded", target, f"Health {report.status}: {hooks[pk]}", detail))
        if report.status == "unhealthy":
            found.append(
                Condition("health_unhealthy", target, f"Health unhealthy: {hooks[pk]}", detail, "critical")
            )
    return found, {f"webhook:{pk}" for pk in hooks}


def _budgets(now: datetime) -> tuple[list[Condition], set[str], dict]:
    """budget_<p>: reserved + spent today ≥ p % of the daily limit. Resolved when it is 5 points
    below again (a new day, a higher limit), so reservations coming and going do not flap it."""
    found: list[Condition] = []
    checked: set[str] = set()
    hysteresis: dict = {}
    thresholds = budget_thresholds()
    for b in CreditBudget.objects.all():
        target = f"budget:{b.pk}"
        checked.add(target)
        row = CreditUsage.objects.filter(budget=b, day=b.day_for(now)).aggregate(
            s=Sum("spent"), r=Sum("reserved"), a=Sum("actions_spent"), ar=Sum("actions_reserved")
        )
        used = (row["s"] or Decimal(0)) + (row["r"] or Decimal(0))
        shown = f"{used} of {b.daily_limit} credits reserved or spent"
        credits = _Meter("budget_", "today's limit", shown, used, b.daily_limit)
        _shares(b, credits, thresholds, found, hysteresis)
        if b.actions_daily_limit is not None:
            actions = (row["a"] or 0) + (row["ar"] or 0)
            shown = f"{actions:,} of {b.actions_daily_limit:,} Clay Actions reserved or used"
            meter = _Meter("budget_actions_", "today's Clay Actions", shown, actions, b.actions_daily_limit)
            _shares(b, meter, thresholds, found, hysteresis)
        runout = _runout(b, used, now=now)
        if runout is not None:
            found.append(runout)
        elif used >= b.daily_limit:
            # It did run out: not "resolved" (budget_100 says the rest); a new day resolves it.
            hysteresis[("budget_runout", target)] = True
    return found, checked, hysteresis


@dataclass(frozen=True)
class _Meter:
    """One of a budget's two meters (credits, Clay Actions) as its alerts name it."""

    prefix: str  # the rules: <prefix><p>
    of: str  # "today's limit"
    shown: str  # "12 of 60 credits reserved or spent"
    used: Decimal | int
    limit: Decimal | int


def _shares(b: CreditBudget, meter: _Meter, thresholds: list[int], found: list, hysteresis: dict) -> None:
    """<prefix><p>: the meter's use today (reserved or spent) ≥ p % of its limit; within 5 points
    below, kept open (hysteresis). A limit of 0 lets nothing through: every threshold is reached."""
    target = f"budget:{b.pk}"
    share = Decimal(meter.used) * 100 / Decimal(meter.limit) if meter.limit > 0 else Decimal("Infinity")
    for p in thresholds:
        rule = f"{meter.prefix}{p}"
        if share >= p:
            found.append(
                Condition(
                    rule,
                    target,
                    f"Budget {b} at {p} % of {meter.of}",
                    f"{b}: {meter.shown} today "
                    f"({f'{share:.0f} %' if share.is_finite() else 'a limit of 0'}).",
                    "critical" if p >= 100 else "warning",
                )
            )
        elif share >= p - 5:
            hysteresis[(rule, target)] = True


PACE_WINDOW = timedelta(hours=1)
PACE_MIN_WINDOW = timedelta(minutes=10)


def _runout(b: CreditBudget, used: Decimal, *, now: datetime) -> Condition | None:
    """budget_runout: at the pace of the last hour (credits reserved or spent by sends that started
    in it), the day's limit is reached before the daily reset. Not raised before ten minutes of the
    day have passed (too little to project) or once the limit is reached (budget_100 says that)."""
    day = b.day_for(now)
    start = datetime.combine(day, datetime.min.time(), tzinfo=b.tz())
    reset = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=b.tz())
    since = max(start, now - PACE_WINDOW)
    if now - since < PACE_MIN_WINDOW or used >= b.daily_limit:
        return None
    recent = CreditReservation.objects.filter(
        Q(state=CreditReservation.State.HELD) | Q(state=CreditReservation.State.SETTLED),
        usage__budget=b,
        usage__day=day,
        created_at__gt=since,
    ).aggregate(n=Sum("amount"))["n"] or Decimal(0)
    per_second = float(recent) / (now - since).total_seconds()
    if per_second <= 0:
        return None
    runs_out = now + timedelta(seconds=float(b.daily_limit - used) / per_second)
    if runs_out >= reset:
        return None
    local = runs_out.astimezone(b.tz())
    return Condition(
        "budget_runout",
        f"budget:{b.pk}",
        f"Budget {b} runs out before the reset",
        f"{b}: at {per_second * 3600:.0f} credits an hour, the daily limit of {b.daily_limit} is reached "
        f"at about {local:%H:%M %Z}, before the reset at 00:00 {b.timezone}; leads then wait for it.",
    )


def _rows(now: datetime) -> tuple[list[Condition], set[str]]:
    """webhook_rows_<p>: rows_sent ≥ p % of the webhook's lifetime row cap; 100 (or marked full):
    leads fail over to the next webhook."""
    found, checked = [], set()
    for w in Webhook.objects.filter(is_active=True):
        target = f"webhook:{w.pk}"
        checked.add(target)
        share = 100 * w.rows_sent / w.row_cap if w.row_cap else 100
        for p in ROW_THRESHOLDS:
            if share >= p or (p == 100 and w.is_full):
                extra = " It is full: leads fail over to the next webhook." if p == 100 else ""
                found.append(
                    Condition(
                        f"webhook_rows_{p}",
                        target,
                        f"Webhook {w} at {p} % of its row cap",
                        f"{w}: {w.rows_sent} of {w.row_cap} lifetime rows sent.{extra}",
                        "critical" if p == 100 else "warning",
                    )
                )
    return found, checked


def _pauses(now: datetime) -> tuple[list[Condition], set[str]]:
    """paused_429 while a webhook waits out a Retry-After; paused_402 while a workspace is paused
    (Clay's 402: credits or actions exhausted, or an operator's pause)."""
    found, checked = [], set()
    for w in Webhook.objects.all():
        checked.add(f"webhook:{w.pk}")
        if w.paused_until and w.paused_until > now:
            found.append(
                Condition(
                    "paused_429",
                    f"webhook:{w.pk}",
                    f"Rate limited by Clay: {w}",
                    f"{w}: paused until {w.paused_until:%H:%M:%S %Z} (429 Retry-After).",
                )
            )
    for ws in Workspace.objects.all():
        checked.add(f"workspace:{ws.pk}")
        if ws.paused_until and ws.paused_until > now:
            found.append(
                Condition(
                    "paused_402",
                    f"workspace:{ws.pk}",
                    f"Workspace paused: {ws}",
                    f"{ws}: paused until {ws.paused_until:%Y-%m-%d %H:%M %Z}. {ws.pause_reason}",
                    "critical",
                )
            )
    return found, checked


def _dlq(now: datetime) -> tuple[list[Condition], set[str]]:
    """dlq_inflow: more than CLAYOPS_ALERT_DLQ_PER_HOUR dead letters in the last hour."""
    limit = AlertSettings.current().dlq_per_hour
    n = DeadLetter.objects.filter(created_at__gt=now - timedelta(hours=1)).count()
    found = []
    if n > limit:
        found.append(
            Condition(
                "dlq_inflow",
                "dlq",
                f"{n} leads dead-lettered in the last hour",
                f"More than {limit} per hour reached the DLQ.",
            )
        )
    return found, {"dlq"}


def _liveness(now: datetime) -> tuple[list[Condition], set[str]]:
    """no_tick: no maintenance tick finished for AlertSettings.no_tick_minutes (nothing is reaped,
    retried or drained); no_worker: no RQ worker alive for no_worker_minutes (nothing is sent)."""
    cfg = AlertSettings.current()
    conn = liveness.redis_connection()
    at = now.timestamp()
    found = []
    # Resolved only by a tick or a worker, never by Redis forgetting its clocks (flushed, restarted
    # empty, or the keys expired after a day without ticks): an open alert then holds.
    still = set(
        Alert.objects.filter(state=OPEN, rule__in=("no_tick", "no_worker")).values_list("rule", flat=True)
    )
    without_tick = liveness.seconds_without_tick(conn, now=at)
    if without_tick >= cfg.no_tick_minutes * 60 or ("no_tick" in still and liveness.last_tick(conn) is None):
        found.append(
            Condition(
                "no_tick",
                "maintenance",
                "No maintenance tick",
                f"No maintenance tick has finished for {without_tick / 60:.0f} minutes: stuck leads are "
                "not recovered, retries and drains do not run. Is `manage.py cron` running, and a worker?",
                "critical",
            )
        )
    without_worker = liveness.seconds_without_worker(conn, now=at)
    if without_worker >= cfg.no_worker_minutes * 60 or (
        "no_worker" in still and not liveness.live_workers(conn)
    ):
        found.append(
            Condition(
                "no_worker",
                "workers",
                "No live RQ worker",
                f"No RQ worker has been alive for {without_worker / 60:.0f} minutes: nothing is sent.",
                "critical",
            )
        )
    return found, {"maintenance", "workers"}


RULE_GROUPS: dict[str, tuple[str, ...]] = {
    "breakers": ("breaker_open", "breaker_open_long"),
    "health": ("health_degraded", "health_unhealthy"),
    "rows": tuple(f"webhook_rows_{p}" for p in ROW_THRESHOLDS),
    "pauses": ("paused_429", "paused_402"),
    "dlq": ("dlq_inflow",),
    "liveness": ("no_tick", "no_worker"),
}
CHECKS: dict[str, Callable] = {
    "breakers": _breakers,
    "health": _health,
    "rows": _rows,
    "pauses": _pauses,
    "dlq": _dlq,
    "liveness": _liveness,
}
GROUPS = (*CHECKS, "budgets", "imports")
# What the maintenance tick evaluates: all but liveness, which `manage.py cron` watches (a tick that
# runs proves there is a tick and a worker; one that does not cannot say so).
TICK_GROUPS = tuple(g for g in GROUPS if g != "liveness")


def _imports(now: datetime) -> int:
    """import_failed: one alert per failed import (finished in the last 24 h), open until acknowledged."""
    opened = 0
    for imp in LeadImport.objects.filter(
        state=LeadImport.State.FAILED, finished_at__gt=now - IMPORT_LOOKBACK
    ):
        target = f"import:{imp.pk}"
        if not Alert.objects.filter(rule="import_failed", target=target).exists():
            opened += (
                raise_alert(
                    "import_failed",
                    target,
                    f"Import failed: {imp.filename}",
                    imp.error[:2000],
                    severity="warning",
                    now=now,
                )
                is not None
            )
        else:
            remind("import_failed", target, now=now)
    return opened


def evaluate(*, now: datetime | None = None, only: tuple[str, ...] | list[str] | None = None) -> int:
    """Raise what holds, resolve what no longer does, for the maintenance tick's rule groups
    (TICK_GROUPS) or those in `only` (of GROUPS). Safe with any number of workers at once. Returns
    the number of alerts this call opened, reopened or resolved."""
    now = now or timezone.now()
    wanted = set(TICK_GROUPS if only is None else only) & set(GROUPS)
    # A transition from now on must ask for an evaluation of its own: this one may look too early.
    enqueue.alert_check_started(wanted)
    changed = 0
    for name, check in CHECKS.items():
        if name in wanted:
            found, checked = check(now)
            changed += _apply(found, checked, RULE_GROUPS[name], now=now)
    if "budgets" in wanted:
        found, checked, keep = _budgets(now)
        # Every budget_* rule, so a threshold removed in the admin resolves its open alerts too.
        changed += _apply(found, checked, "budget_", now=now, keep=keep)
    if "imports" in wanted:
        changed += _imports(now)
    return changed


def evaluate_liveness(*, now: datetime | None = None) -> int:
    """The no-tick and no-worker rules alone: what `manage.py cron` evaluates on its own."""
    return evaluate(now=now, only=("liveness",))


def _apply(found, checked, rules, *, now, keep=None) -> int:
    changed = 0
    holding = {(c.rule, c.target) for c in found}
    for c in found:
        changed += raise_alert(c.rule, c.target, c.title, c.message, severity=c.severity, now=now) is not None
    # Every open alert of these rules that no longer holds, including targets gone since (`checked`
    # lists what was looked at, for the reader; a deleted webhook's alert resolves too).
    del checked
    if isinstance(rules, str):  # a prefix
        stale = Alert.objects.filter(state=OPEN, rule__startswith=rules)
    else:
        stale = Alert.objects.filter(state=OPEN, rule__in=rules)
    for rule, target in stale.values_list("rule", "target"):
        if (rule, target) in holding or (keep and (rule, target) in keep):
            continue
        changed += resolve_alert(rule, target, "The condition no longer holds.", now=now)
    return changed
