"""Import reports in a real browser, as an operator: the duplicates with the lead each one duplicates,
retrying an import's DLQ entries as a group, and cancelling an import while its job runs."""

from __future__ import annotations

import io
import re
import threading

from django.db import connection
from playwright.sync_api import expect

from clayops.imports import create_import, lead_fingerprint, run_import
from clayops.imports import run as import_run
from clayops.models import DeadLetter, Lead, LeadImport
from tests.factories import make_dead_letter, make_lead, make_lead_import


def upload(content: str, name: str) -> LeadImport:
    return create_import(file=io.BytesIO(content.encode()), filename=name)


def test_it_shows_the_duplicates_and_retries_the_import_dlq_as_a_group(page, login_as, operator, webhook):
    old = make_lead(
        lead_import=make_lead_import(filename="march.csv"),
        line=7,
        email="old@acme.com",
        fingerprint=lead_fingerprint(email="old@acme.com", domain=""),
        state=Lead.State.ENRICHED,
    )
    imp = run_import(
        upload("email\na@acme.com\nold@acme.com\nb@beta.io\nc@gamma.io\nA@acme.com\n", "april.csv").pk
    )
    assert imp is not None and imp.duplicate_rows == 2
    first = imp.leads.get(line=2)
    failed = list(imp.leads.filter(line__in=[4, 5]))
    Lead.objects.filter(pk__in=[lead.pk for lead in failed]).update(state=Lead.State.DEAD)
    entries = [make_dead_letter(i, webhook=webhook, lead=lead) for i, lead in enumerate(failed)]
    login_as(operator)

    page.goto(f"/imports/{imp.pk}/")

    older = page.locator("#duplicate-line-3")
    expect(older).to_contain_text("old@acme.com")
    expect(older.get_by_role("link", name=f"lead #{old.pk}")).to_have_attribute("href", f"/leads/{old.pk}/")
    expect(older.get_by_role("link", name=re.compile("march.csv"))).to_have_attribute(
        "href", f"/imports/{old.lead_import_id}/"
    )
    same = page.locator("#duplicate-line-6")
    expect(same).to_contain_text("this import, line 2")
    expect(same.get_by_role("link", name=f"lead #{first.pk}")).to_be_visible()
    expect(page.get_by_test_id("dlq-open")).to_contain_text("2 leads of this import are in the DLQ")

    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Retry 2 failed leads").click()

    expect(page.locator(".flash")).to_contain_text("2 retried.")
    expect(page.get_by_test_id("dlq-open")).to_have_text("No lead of this import is in the DLQ.")
    assert asked and "(2 in the DLQ)" in asked[0] and "budget" in asked[0]
    assert {DeadLetter.objects.get(pk=e.pk).state for e in entries} == {"retrying"}
    assert set(Lead.objects.filter(pk__in=[lead.pk for lead in failed]).values_list("state", flat=True)) == {
        Lead.State.QUEUED
    }

    page.locator("#duplicate-line-3").get_by_role("link", name=f"lead #{old.pk}").click()
    expect(page).to_have_url(re.compile(rf"/leads/{old.pk}/$"))


def test_it_cancels_an_import_while_its_job_runs(page, login_as, operator, webhook, settings, monkeypatch):
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 1
    imp = upload("email\na@acme.com\nb@beta.io\nc@gamma.io\nd@delta.io\n", "big.csv")
    original = import_run._ImportRun.flush
    between_batches, resume = threading.Event(), threading.Event()

    def flush_then_wait(self):
        original(self)
        if not between_batches.is_set():  # after the first batch committed: the job is "running"
            between_batches.set()
            resume.wait(20)

    monkeypatch.setattr(import_run._ImportRun, "flush", flush_then_wait)
    outcome: dict[str, LeadImport | None] = {}

    def job():
        try:
            outcome["import"] = run_import(imp.pk)
        finally:
            connection.close()

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert between_batches.wait(20)
        login_as(operator)
        page.goto(f"/imports/{imp.pk}/")
        status = page.locator(f"#import-{imp.pk}-status")
        expect(status).to_have_attribute("data-state", "running")

        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Cancel import").click()

        expect(page.locator(".flash")).to_contain_text("Import cancelled: 1 unsent lead discarded.")
        expect(status).to_have_attribute("data-state", "cancelled")
        expect(page.get_by_test_id("cancelled")).to_contain_text(
            re.compile(r"Cancelled by olga at \d{4}-\d\d-\d\d")
        )
        expect(page.get_by_role("button", name="Cancel import")).to_have_count(0)
    finally:
        resume.set()
        worker.join(30)

    done = outcome["import"]
    assert done is not None and done.state == LeadImport.State.CANCELLED and done.cancelled_by == operator
    assert done.total_rows == 1  # the job stopped at its next batch
    assert list(Lead.objects.filter(lead_import=imp).values_list("email", "state")) == [
        ("a@acme.com", Lead.State.DISCARDED)
    ]
