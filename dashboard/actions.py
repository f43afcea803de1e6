"""Actions (POST only, CSRF, operators only). Each calls one service, which writes the AuditEntry,
and answers htmx with the updated partial, anyone else with a redirect back to the page."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_htmx.http import trigger_client_event

from clayops import breaker, counts, delivery, dlq, imports, selectors
from clayops.converters import parse_id
from clayops.delivery import resolution
from clayops.models import Webhook

from .access import HtmxHttpRequest, operator_required
from .forms import UploadForm
from .views import dlq_context, imports_context


def _card(request: HtmxHttpRequest, webhook_id: int, message: str, event: str) -> HttpResponse:
    if not request.htmx:
        messages.success(request, message)
        return redirect("dashboard:overview")
    card = selectors.overview_cards(webhook_id=webhook_id)[0]
    response = render(request, "dashboard/overview.html#card", {"card": card, "message": message})
    return trigger_client_event(response, event, {"webhook_id": webhook_id, "message": message})


@require_POST
@operator_required
def breaker_force_open(request: HtmxHttpRequest, webhook_id: int) -> HttpResponse:
    webhook = get_object_or_404(Webhook, pk=webhook_id)
    reason = request.POST.get("reason", "").replace("\x00", "").strip()[:200] or "paused by operator"
    breaker.force_open(webhook.pk, by=request.user, reason=reason)
    return _card(request, webhook.pk, f"{webhook.name}: paused (forced open).", "breaker-changed")


@require_POST
@operator_required
def breaker_reset(request: HtmxHttpRequest, webhook_id: int) -> HttpResponse:
    webhook = get_object_or_404(Webhook, pk=webhook_id)
    breaker.reset(webhook.pk, by=request.user)
    return _card(request, webhook.pk, f"{webhook.name}: breaker reset to closed.", "breaker-changed")


@require_POST
@operator_required
def offline_drain(request: HtmxHttpRequest, webhook_id: int) -> HttpResponse:
    webhook = get_object_or_404(Webhook, pk=webhook_id)
    n = delivery.drain_offline(by=request.user, webhook_id=webhook.pk)
    return _card(request, webhook.pk, f"{webhook.name}: {n} deferred leads released.", "offline-drained")


@require_POST
@operator_required
def import_upload(request: HtmxHttpRequest) -> HttpResponse:
    form = UploadForm(request.POST, request.FILES)
    if form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            imp = imports.create_import(
                file=upload,
                filename=upload.name,
                by=request.user,
                webhook=form.cleaned_data.get("webhook"),
                urgent=form.cleaned_data.get("urgent", False),
            )
        except ValidationError as exc:
            form.add_error("file", exc)
        else:
            if not request.htmx:
                return redirect("dashboard:import_detail", imp.pk)
            summary = selectors.import_summary(import_id=imp.pk)
            response = render(request, "dashboard/imports.html#upload", imports_context(summary=summary))
            return trigger_client_event(response, "imports-changed", {"import_id": imp.pk})
    if request.htmx:  # 200 so htmx swaps the form with its errors in
        return render(request, "dashboard/imports.html#upload", imports_context(form=form))
    return render(request, "dashboard/imports.html", imports_context(form=form), status=400)


def _entry_ids(request: HtmxHttpRequest) -> list[int]:
    """The one entry of a per-row button (`only`), else the checked boxes (`ids`)."""
    raw = [request.POST["only"]] if request.POST.get("only") else request.POST.getlist("ids")
    return sorted({n for n in map(parse_id, raw) if n is not None})


def _unreadable_webhook(request: HtmxHttpRequest, webhook_id: int | None) -> bool:
    """A webhook was asked for but is no webhook id (never read as "every webhook")."""
    return bool(request.POST.get("webhook", "").strip()) and webhook_id is None


def _unreadable_scope(request: HtmxHttpRequest, webhook_id: int | None, ids: list[int]) -> str:
    """Why the leads or the webhook asked for cannot be read ("" when they can, or none was given)."""
    if _unreadable_webhook(request, webhook_id):
        return "The webhook must be a webhook id."
    asked = request.POST.get("only") or any(v.strip() for v in request.POST.getlist("ids"))
    if asked and not ids:
        return "No valid lead id was given."
    return ""


def _dlq_done(request: HtmxHttpRequest, message: str, event: str, count: int) -> HttpResponse:
    counts.refresh_dlq()  # the page that answers shows the action's effect
    nxt = request.POST.get("next", "")
    if not request.htmx:
        messages.success(request, message)
        if nxt and url_has_allowed_host_and_scheme(nxt, {request.get_host()}):
            return HttpResponseRedirect(nxt)  # a path or URL, never a view name to reverse
        return redirect(reverse("dashboard:dlq") + "?" + _filter_query(request))
    response = render(request, "dashboard/dlq.html#results", dlq_context(request.POST, message=message))
    return trigger_client_event(response, event, {"count": count, "message": message})


def _filter_query(request: HtmxHttpRequest) -> str:
    keep = ("state", "error_class", "webhook", "since", "until")
    query = request.POST.copy()
    for key in list(query):
        if key not in keep or not query[key]:
            del query[key]
    return query.urlencode()


@require_POST
@operator_required
def dlq_retry(request: HtmxHttpRequest) -> HttpResponse:
    ids = _entry_ids(request)
    n = dlq.retry_entries(entry_ids=ids, by=request.user) if ids else 0
    return _dlq_done(request, _said("Retried", n, len(ids)), "dlq-changed", n)


@require_POST
@operator_required
def dlq_discard(request: HtmxHttpRequest) -> HttpResponse:
    ids = _entry_ids(request)
    n = dlq.discard_entries(entry_ids=ids, by=request.user) if ids else 0
    return _dlq_done(request, _said("Discarded", n, len(ids)), "dlq-changed", n)


@require_POST
@operator_required
def dlq_drain(request: HtmxHttpRequest) -> HttpResponse:
    webhook_id = parse_id(request.POST.get("webhook", ""))
    if _unreadable_webhook(request, webhook_id):  # never widen to every webhook
        return HttpResponse("The webhook must be a webhook id.", status=400, content_type="text/plain")
    error_class = request.POST.get("error_class", "").replace("\x00", "") or None
    limit = None
    if request.POST.get("scope") == "budget":  # the forecast's "within today's budget"
        limit = dlq.drain_preview(webhook_id=webhook_id, error_class=error_class)["within_budget"]
    n = dlq.drain(by=request.user, webhook_id=webhook_id, error_class=error_class, limit=limit)
    message = f"Draining {n} entr{'y' if n == 1 else 'ies'} at the drain rate, through budget and breaker."
    return _dlq_done(request, message, "dlq-changed", n)


def _said(verb: str, done: int, asked: int) -> str:
    if not asked:
        return "Select at least one entry first."
    noun = "entry" if done == 1 else "entries"
    skipped = f" ({asked - done} were no longer pending)" if asked > done else ""
    return f"{verb} {done} {noun}{skipped}."


@require_POST
@operator_required
def leads_resolve(request: HtmxHttpRequest) -> HttpResponse:
    """Overdue or uncertain leads: wait longer, resend or mark delivered; the ones checked (`ids`),
    else every lead in `state` (of `webhook`)."""
    action, state = request.POST.get("action", ""), request.POST.get("state", "")
    if action not in resolution.ALLOWED.get(state, ()):
        return HttpResponse("Unknown action or state.", status=400, content_type="text/plain")
    webhook_id = parse_id(request.POST.get("webhook", ""))
    ids = _entry_ids(request)
    refused = _unreadable_scope(request, webhook_id, ids)
    if refused:  # never widen to every lead of the state because an id could not be read
        return HttpResponse(refused, status=400, content_type="text/plain")
    chosen = resolution.select(state=state, webhook_id=webhook_id, lead_ids=ids)
    n = resolution.resolve(action=action, lead_ids=chosen, by=request.user) if chosen else 0
    verb = {
        "wait": "Waiting longer for",
        "resend": "Resending",
        "deliver": "Marked delivered:",
        "reenrich": "Re-enriching",
    }[action]
    messages.success(request, f"{verb} {n} lead{'s' if n != 1 else ''}.")
    nxt = request.POST.get("next", "")
    if nxt and url_has_allowed_host_and_scheme(nxt, {request.get_host()}):
        return HttpResponseRedirect(nxt)  # a path or URL, never a view name to reverse
    return redirect(reverse("dashboard:leads") + f"?state={state}")


def _alert_id(request: HtmxHttpRequest) -> int | None:
    return parse_id(request.POST.get("id", ""))


@require_POST
@operator_required
def alert_ack(request: HtmxHttpRequest) -> HttpResponse:
    """Acknowledge an alert: no more reminders (an import_failed alert is closed by it). Audited."""
    from clayops import alerts

    alert_id = _alert_id(request)
    if alert_id is None:
        messages.error(request, "No alert given.")
    elif alerts.acknowledge(alert_id, by=request.user):
        messages.success(request, f"Alert {alert_id} acknowledged: no more reminders.")
    else:
        messages.info(request, f"Alert {alert_id} was acknowledged already (or does not exist).")
    return redirect("dashboard:alerts")


@require_POST
@operator_required
def alert_mute(request: HtmxHttpRequest) -> HttpResponse:
    """Mute an alert for some minutes (0 unmutes): no notification at all meanwhile. Audited."""
    from clayops import alerts

    alert_id = _alert_id(request)
    try:
        minutes = max(0, min(7 * 24 * 60, int(request.POST.get("minutes", "60"))))
    except ValueError:
        minutes = 60
    if alert_id is None or not alerts.mute(alert_id, minutes=minutes, by=request.user):
        messages.error(request, "No such alert.")
    else:
        done = f"muted for {minutes} minutes." if minutes else "unmuted."
        messages.success(request, f"Alert {alert_id} {done}")
    return redirect("dashboard:alerts")
