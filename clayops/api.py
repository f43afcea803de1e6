"""Machine-facing endpoints: Clay's enrichment callbacks and a health check for load balancers."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST


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


@csrf_exempt
@require_POST
def clay_callback(request: HttpRequest, webhook_id: int) -> HttpResponse:
    from .callbacks import handle_callback

    return handle_callback(request, webhook_id)


@require_GET
def lead_data(request: HttpRequest, lead_id: int) -> HttpResponse:
    """The best data for a lead now: Clay's enrichment, else the cache by domain, else a fallback."""
    from django.shortcuts import get_object_or_404

    from .degrade import lead_data as best_data
    from .models import Lead

    if not request.user.is_authenticated:
        return JsonResponse({"ok": False, "error": "login required"}, status=401)
    lead = get_object_or_404(Lead, pk=lead_id)
    return JsonResponse({"ok": True, "lead_id": lead.pk, "state": lead.state, **best_data(lead)})
