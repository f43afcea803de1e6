"""Urgent imports: an import marked urgent on upload puts its leads' jobs on the `urgent` queue,
which workers (in `up`'s, the Procfile's and compose's order) serve before `submit`: its leads go
out before those of a bulk import already waiting, through the same guards."""

from __future__ import annotations

import django_rq
import httpx
import pytest
import respx
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from clayops.models import AuditEntry, Lead, LeadImport

WORKER_QUEUES = ("maintenance", "urgent", "submit", "default")  # as `up` and the Procfile start them


@pytest.fixture(autouse=True)
def _inline(settings):
    settings.CLAYOPS_SEND_CONCURRENCY = 1


def csv(prefix: str, n: int) -> bytes:
    return ("email,company\n" + "".join(f"{prefix}{i}@{prefix}{i}.com,C{i}\n" for i in range(n))).encode()


def upload(client, name: str, content: bytes, **data):
    return client.post(
        reverse("dashboard:import_upload"), {"file": SimpleUploadedFile(name, content), **data}
    )


def run_imports() -> None:
    django_rq.get_worker("default", worker_class="rq.SimpleWorker").work(burst=True)


@respx.mock
def test_an_urgent_import_goes_out_before_a_bulk_import_already_waiting(
    client, operator, webhook, django_capture_on_commit_callbacks
):
    order: list[str] = []

    def record(request):
        order.append(request.content.decode())
        return httpx.Response(200)

    respx.post(webhook.url).mock(side_effect=record)
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        upload(client, "bulk.csv", csv("bulk", 120))
    with django_capture_on_commit_callbacks(execute=True):
        run_imports()  # the bulk import's 3 jobs now wait on `submit`
    with django_capture_on_commit_callbacks(execute=True):
        assert upload(client, "hot.csv", csv("hot", 5), urgent="on").status_code == 302
    with django_capture_on_commit_callbacks(execute=True):
        run_imports()
    hot = LeadImport.objects.get(filename="hot.csv")
    assert hot.urgent and not LeadImport.objects.get(filename="bulk.csv").urgent
    assert django_rq.get_queue("urgent").count == 1 and django_rq.get_queue("submit").count == 3
    assert AuditEntry.objects.get(action="import_upload", target=f"import:{hot.pk}").detail["urgent"] is True

    django_rq.get_worker(*WORKER_QUEUES, worker_class="rq.SimpleWorker").work(burst=True)

    assert len(order) == 125
    assert all('"hot' in body for body in order[:5])  # the urgent leads first, then the bulk ones
    assert Lead.objects.filter(lead_import=hot, state=Lead.State.ACCEPTED).count() == 5


def test_the_upload_form_offers_it_and_the_import_page_shows_it(
    client, operator, webhook, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    assert 'name="urgent"' in client.get(reverse("dashboard:imports")).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        upload(client, "hot.csv", csv("hot", 2), urgent="on")
    imp = LeadImport.objects.get()
    page = client.get(reverse("dashboard:import_detail", args=[imp.pk])).content.decode()
    assert ">urgent</span>" in page
