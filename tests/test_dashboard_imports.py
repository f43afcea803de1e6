"""Imports: upload (operators), validation summary, progress partial that stops polling when done."""

from __future__ import annotations

import django_rq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from clayops.models import AuditEntry, ImportRowError, Lead, LeadImport
from tests.factories import make_lead_import

HX = {"HTTP_HX_REQUEST": "true"}
CSV = b"email,company\nann@acme.com,Acme\nnot-an-email,\nann@acme.com,Acme\nbob@beta.io,Beta\n"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def upload(client, content=CSV, name="leads.csv", **extra):
    return client.post(
        reverse("dashboard:import_upload"), {"file": SimpleUploadedFile(name, content)}, **extra
    )


def test_it_redirects_anonymous_to_login(client, db):
    assert client.get(reverse("dashboard:imports")).status_code == 302
    r = upload(client)
    assert r.status_code == 302 and r["Location"].startswith(reverse("login"))
    assert not LeadImport.objects.exists()


def test_it_refuses_upload_from_a_viewer(client, viewer):
    client.force_login(viewer)
    assert upload(client).status_code == 403
    assert not LeadImport.objects.exists()


def test_it_answers_405_to_get_on_upload(client, operator):
    client.force_login(operator)
    assert client.get(reverse("dashboard:import_upload")).status_code == 405


def test_it_hides_the_upload_form_from_viewers(client, viewer):
    client.force_login(viewer)
    html = client.get(reverse("dashboard:imports")).content.decode()
    assert "Upload a lead CSV" not in html and "Recent imports" in html


def test_it_uploads_enqueues_and_audits(client, operator, webhook, django_capture_on_commit_callbacks):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        r = upload(client, **HX)
    assert r.status_code == 200
    html = r.content.decode()
    assert html.strip().startswith('<section id="upload"') and "leads.csv" in html
    assert "imports-changed" in r["HX-Trigger"]
    imp = LeadImport.objects.get()
    assert imp.uploaded_by == operator and imp.state == "pending" and imp.webhook == webhook
    assert f'hx-get="{reverse("dashboard:import_detail", args=[imp.pk])}"' in html  # polls its progress
    audit = AuditEntry.objects.get(action="import_upload")
    assert audit.user == operator and audit.target == f"import:{imp.pk}"
    assert [job.func_name for job in django_rq.get_queue("default").jobs] == ["clayops.jobs.import_leads"]


def test_it_redirects_to_the_import_without_htmx(client, operator, webhook):
    client.force_login(operator)
    r = upload(client)
    imp = LeadImport.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse("dashboard:import_detail", args=[imp.pk])


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [(b"", "empty.csv", "is empty"), (b"PK\x03\x04", "book.xlsx", "is not a CSV file")],
)
def test_it_shows_why_a_file_is_refused(client, operator, content, name, message):
    client.force_login(operator)
    r = upload(client, content, name, **HX)
    assert r.status_code == 200 and message in r.content.decode()
    assert not LeadImport.objects.exists() and not AuditEntry.objects.exists()
    r = upload(client, content, name)
    assert r.status_code == 400 and message in r.content.decode()


def test_it_shows_progress_then_stops_polling_with_286(
    client, operator, webhook, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        upload(client)
    imp = LeadImport.objects.get()
    url = reverse("dashboard:import_detail", args=[imp.pk])
    running = client.get(url, **HX)
    assert running.status_code == 200 and 'hx-trigger="every 1s"' in running.content.decode()

    # In-process worker: it sees this test's (uncommitted) transaction.
    django_rq.get_worker("default", worker_class="rq.SimpleWorker").work(burst=True)

    done = client.get(url, **HX)
    html = done.content.decode()
    assert done.status_code == 286
    assert "<html" not in html and "hx-trigger" not in html
    assert 'value="100"' in html
    imp.refresh_from_db()
    assert (imp.state, imp.valid_rows, imp.invalid_rows, imp.duplicate_rows) == ("done", 2, 1, 1)
    assert '<dd data-testid="valid-rows">2</dd>' in html
    line = ImportRowError.objects.get(lead_import=imp).line
    assert f"<td>{line}</td>" in html  # first errors with their line numbers
    assert f"{reverse('dashboard:leads')}?lead_import={imp.pk}" in html
    assert Lead.objects.filter(lead_import=imp).count() == 2


def test_it_renders_the_whole_import_page_without_htmx(client, viewer):
    imp = make_lead_import(filename="x.csv")
    client.force_login(viewer)
    r = client.get(reverse("dashboard:import_detail", args=[imp.pk]))
    assert r.status_code == 200 and "<html" in r.content.decode()


def test_it_lists_imports_and_polls_only_while_one_runs(client, viewer):
    make_lead_import(filename="old.csv")
    client.force_login(viewer)
    html = client.get(reverse("dashboard:imports"), **HX).content.decode()
    assert "old.csv" in html and "every 2s" not in html
    make_lead_import(filename="new.csv", state="running", size_bytes=100, bytes_read=40)
    html = client.get(reverse("dashboard:imports"), **HX).content.decode()
    assert "every 2s" in html and 'value="40"' in html
