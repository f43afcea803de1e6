"""GET /metrics: Prometheus' scrape (clayops.metrics), for a bearer token or an allowed network.

Either admits a scrape: `Authorization: Bearer <CLAYOPS_METRICS_TOKEN>` (compared in constant
time), or a client address (REMOTE_ADDR, the peer gunicorn saw; X-Forwarded-For is never read, a
client could write anything there) inside CLAYOPS_METRICS_ALLOWED_NETWORKS. A dashboard login
does not: the metrics are for machines. With neither setting, /metrics is off: 403 saying so.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from . import metrics as metrics_service

OFF = "metrics are off: set CLAYOPS_METRICS_TOKEN or CLAYOPS_METRICS_ALLOWED_NETWORKS"


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(metrics_service.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    token = settings.CLAYOPS_METRICS_TOKEN
    networks = settings.CLAYOPS_METRICS_ALLOWED_NETWORKS
    if not token and not networks:
        return JsonResponse({"ok": False, "error": OFF}, status=403)
    if token and _has_token(request, token):
        return None
    if networks and _from_network(request, networks):
        return None
    if token:
        response = JsonResponse({"ok": False, "error": "a valid bearer token is required"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="clayops metrics"'
        return response
    return JsonResponse({"ok": False, "error": "this address may not read the metrics"}, status=403)


def _has_token(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _from_network(request: HttpRequest, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False  # a unix socket or no address: not on any network
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.5 is 10.0.0.5
    return any(address in ipaddress.ip_network(network, strict=False) for network in networks)
