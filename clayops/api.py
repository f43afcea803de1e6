"""Machine-facing endpoints: Clay's enrichment callbacks and a health check for load balancers."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import degrade
from .models import Lead
from .provisioning import can_operate, can_view


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """200 when the database and Redis both answer; 503 naming what does not."""
    import django_rq

    problems = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        problems.append(f"database: {exc.__class__.__name__}")
    try:
        django_rq.get_connection("default").ping()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"redis: {exc.__class__.__name__}")
    if problems:
        return JsonResponse({"ok": False, "problems": problems}, status=503)
    return JsonResponse({"ok": True})


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Ready to do the work, not just up: the database and Redis answer, a live RQ worker (its
    heartbeat recent) and a maintenance tick finished within three tick intervals. 503 naming what
    is missing. Reads only; a few queries and Redis calls."""
    import time

    import django_rq
    from django.conf import settings
    from rq import Worker

    from .liveness import LAST_TICK_KEY

    problems = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        problems.append(f"database: {exc.__class__.__name__}")
    stale = 3 * max(1, settings.CLAYOPS_TICK_SECONDS)
    try:
        conn = django_rq.get_connection("default")
        workers = Worker.all(connection=conn)
        if not workers:
            problems.append("no live RQ worker")
        last_tick = conn.get(LAST_TICK_KEY)
        if last_tick is None or time.time() - float(last_tick) > stale:
            problems.append(f"no maintenance tick in the last {stale} s (is `manage.py cron` running?)")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"redis: {exc.__class__.__name__}")
    if problems:
        return JsonResponse({"ok": False, "problems": problems}, status=503)
    return JsonResponse({"ok": True, "workers": len(workers)})


@csrf_exempt
@require_POST
def clay_callback(request: HttpRequest, webhook_id: int) -> HttpResponse:
    from .callbacks import handle_callback

    return handle_callback(request, webhook_id)


@require_http_methods(["GET", "POST"])
def lead_data(request: HttpRequest, lead_id: int) -> HttpResponse:
    """The best data for a lead now: Clay's enrichment, else the cache by domain, else a fallback.

    GET reads (viewers and operators). POST serves it: records the answer on the lead and moves a
    deferred lead to served_cache / served_fallback (operators, with CSRF like every dashboard POST).
    """
    if not request.user.is_authenticated:
        return JsonResponse({"ok": False, "error": "login required"}, status=401)
    allowed = can_operate(request.user) if request.method == "POST" else can_view(request.user)
    if not allowed:
        return JsonResponse({"ok": False, "error": "no role in clayops allows this"}, status=403)
    lead = get_object_or_404(Lead, pk=lead_id)
    answer = degrade.lead_data(lead) if request.method == "POST" else degrade.best_answer(lead)[0]
    return JsonResponse({"ok": True, "lead_id": lead.pk, "state": lead.state, **answer})
