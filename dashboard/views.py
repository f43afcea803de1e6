from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from clayops.models import Webhook


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    webhooks = Webhook.objects.select_related("workspace", "breaker")
    return render(request, "dashboard/overview.html", {"webhooks": webhooks})
