"""Full import reports: duplicates with the lead they duplicate, cancelling an import, and retrying or
discarding an import's DLQ entries as a group (through clayops.dlq, so through budget and breaker)."""

from __future__ import annotations

import csv
import io
import threading
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import respx
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from clayops import delivery, imports
from clayops.imports import create_import, lead_fingerprint, manage, run_import
from clayops.imports import run as import_run
from clayops.models import AuditEntry, DeadLetter, ImportDuplicate, Lead, LeadImport, Webhook
from tests.factories import make_dead_letter, make_lead, make_lead_import, make_user

S = Lead.State
HX = {"HTTP_HX_REQUEST": "true"}


def upload(content: str, name: str = "leads.csv", **kwargs) -> LeadImport:
    return create_import(file=io.BytesIO(content.encode()), filename=name, **kwargs)


def run(content: str, **kwargs) -> LeadImport:
    imp = run_import(upload(content, **kwargs).pk)
    assert imp is not None
    return imp


def duplicates(imp: LeadImport) -> list[tuple[int, str, str, int | None]]:
    rows = ImportDuplicate.objects.filter(lead_import=imp).order_by("line")
    return list(rows.values_list("line", "email", "domain", "original_id"))


def older_lead(email: str = "old@acme.com", filename: str = "march.csv") -> Lead:
    """A lead an earlier import created (line 7 of `filename`)."""
    return make_lead(
        lead_import=make_lead_import(filename=filename),
        line=7,
        email=email,
        domain=email.split("@")[1],
        fingerprint=lead_fingerprint(email=email, domain=""),
        state=S.ENRICHED,
    )


CSV_WITH_DUPLICATES = (
    "email,domain,first name\n"
    "a@acme.com,,\n"  # 2: new
    "old@acme.com,,\n"  # 3: an older import's lead
    "A@ACME.com ,,\n"  # 4: line 2 again
    ",beta.io,Bob\n"  # 5: new
    ",beta.io,bob\n"  # 6: line 5 again
    "not-an-email,,\n"  # 7: invalid, not a duplicate
    "a@acme.com,,\n"  # 8: line 2 again
)


# --- Duplicates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_rows", [1000, 2])
def test_it_records_each_duplicate_row_with_the_lead_it_duplicates(settings, batch_rows, db):
    settings.CLAYOPS_IMPORT_BATCH_ROWS = batch_rows  # 2: originals and repeats in different batches
    old = older_lead()
    imp = run(CSV_WITH_DUPLICATES)

    by_line = dict(imp.leads.values_list("line", "pk"))
    assert sorted(by_line) == [2, 5]
    assert duplicates(imp) == [
        (3, "old@acme.com", "acme.com", old.pk),
        (4, "a@acme.com", "acme.com", by_line[2]),
        (6, "", "beta.io", by_line[5]),
        (8, "a@acme.com", "acme.com", by_line[2]),
    ]
    assert imp.duplicate_rows == 4 and imp.invalid_rows == 1


def test_it_records_the_duplicates_once_when_a_reclaimed_import_is_redone(db):
    old = older_lead()
    imp = run(CSV_WITH_DUPLICATES)
    first = duplicates(imp)
    stale = timezone.now() - timedelta(seconds=imports.STALE_SECONDS + 1)
    LeadImport.objects.filter(pk=imp.pk).update(state="running", heartbeat_at=stale)

    again = run_import(imp.pk)

    assert again is not None and again.state == LeadImport.State.DONE
    assert duplicates(imp) == first and len(first) == again.duplicate_rows == 4
    assert first[0][3] == old.pk


def test_the_import_page_lists_duplicates_with_links_to_the_lead_and_its_import(client, viewer, db):
    old = older_lead(filename="march.csv")
    imp = run(CSV_WITH_DUPLICATES)
    line2 = imp.leads.get(line=2)
    client.force_login(viewer)

    html = client.get(reverse("dashboard:import_detail", args=[imp.pk])).content.decode()

    row3 = html.split('id="duplicate-line-3"')[1].split("</tr>")[0]
    assert reverse("dashboard:lead_detail", args=[old.pk]) in row3
    assert reverse("dashboard:import_detail", args=[old.lead_import_id]) in row3 and "march.csv" in row3
    row4 = html.split('id="duplicate-line-4"')[1].split("</tr>")[0]
    assert reverse("dashboard:lead_detail", args=[line2.pk]) in row4 and "this import, line 2" in row4
    assert reverse("dashboard:import_duplicates_csv", args=[imp.pk]) in html
    assert 'id="duplicate-line-7"' not in html  # the invalid row is no duplicate


def test_it_pages_the_duplicates(client, viewer, db):
    imp = run("email\n" + "same@acme.com\n" * 61)  # line 2 imported, lines 3..62 duplicates
    assert imp.duplicate_rows == 60
    client.force_login(viewer)

    page = client.get(reverse("dashboard:import_detail", args=[imp.pk])).content.decode()
    assert 'id="duplicate-line-3"' in page and 'id="duplicate-line-52"' in page
    assert 'id="duplicate-line-53"' not in page
    assert f"{reverse('dashboard:import_report', args=[imp.pk])}?after=52" in page

    fragment = client.get(reverse("dashboard:import_report", args=[imp.pk]), {"after": 52}, **HX)
    html = fragment.content.decode()
    assert fragment.status_code == 200 and "<html" not in html
    assert html.strip().startswith('<section id="duplicates"')
    assert 'id="duplicate-line-52"' not in html and 'id="duplicate-line-53"' in html
    assert 'id="duplicate-line-62"' in html and "?after=" not in html  # the last page

    without_js = client.get(reverse("dashboard:import_detail", args=[imp.pk]), {"dup_after": 52})
    assert 'id="duplicate-line-53"' in without_js.content.decode()


def test_the_duplicates_csv_names_the_original_lead_and_neutralises_formulas(client, viewer, db):
    old = older_lead(filename="=HYPERLINK(evil).csv")
    imp = run(CSV_WITH_DUPLICATES)
    line2 = imp.leads.get(line=2)
    client.force_login(viewer)

    r = client.get(reverse("dashboard:import_duplicates_csv", args=[imp.pk]))

    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    assert f"import-{imp.pk}-duplicates.csv" in r["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(r.streaming_content).decode())))
    assert [row["line"] for row in rows] == ["3", "4", "6", "8"]
    assert rows[0]["duplicate_of_lead"] == str(old.pk)
    assert rows[0]["lead_import"] == str(old.lead_import_id)
    assert rows[0]["lead_import_file"] == "'=HYPERLINK(evil).csv"  # neutralised
    assert rows[0]["lead_url"].endswith(reverse("dashboard:lead_detail", args=[old.pk]))
    assert (rows[1]["duplicate_of_lead"], rows[1]["lead_line"]) == (str(line2.pk), "2")
    assert client.get(reverse("dashboard:import_duplicates_csv", args=[999999])).status_code == 404


# --- Cancel -------------------------------------------------------------------------------------


@respx.mock
def test_cancel_stops_the_runner_between_batches_and_discards_its_unsent_leads(
    settings, monkeypatch, webhook, operator, django_capture_on_commit_callbacks
):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 2
    original = import_run._ImportRun.flush
    flushed = []

    def flush_then_cancel(self):
        original(self)
        flushed.append(self.total)
        if len(flushed) == 1:  # the operator cancels while the job is between batches
            result = manage.cancel_import(self.imp.pk, by=operator)
            assert result.cancelled and result.discarded == 2

    monkeypatch.setattr(import_run._ImportRun, "flush", flush_then_cancel)
    imp = upload("email\na@acme.com\nb@beta.io\nc@gamma.io\nd@delta.io\ne@eps.io\n")
    with django_capture_on_commit_callbacks(execute=True):
        imp = run_import(imp.pk)

    assert imp is not None and imp.state == LeadImport.State.CANCELLED
    assert imp.cancelled_by == operator and imp.cancelled_at is not None
    assert flushed == [2]  # the next batch failed the fence: nothing after it was read or written
    assert (imp.total_rows, imp.valid_rows) == (2, 2)
    leads = Lead.objects.filter(lead_import=imp)
    assert sorted(leads.values_list("email", "state")) == [
        ("a@acme.com", S.DISCARDED),
        ("b@beta.io", S.DISCARDED),
    ]
    assert not Lead.objects.filter(state__in=[S.QUEUED, S.DEFERRED]).exists()
    # The first batch's submission job was enqueued before the cancel: it finds nothing to send.
    delivery.submit_batch(list(leads.values_list("pk", flat=True)))
    assert route.call_count == 0
    assert set(leads.values_list("state", flat=True)) == {S.DISCARDED}
    audit = AuditEntry.objects.get(action="import_cancel")
    assert (audit.user, audit.target, audit.count) == (operator, f"import:{imp.pk}", 2)


def test_a_cancel_while_a_batch_is_read_rolls_that_batch_back(settings, monkeypatch, operator, db):
    settings.CLAYOPS_IMPORT_BATCH_ROWS = 2
    original = import_run._ImportRun.add_row

    def cancel_on_the_third_row(self, fields, lines):
        if lines[0][0] == 4:  # batch 1 (lines 2-3) is committed, batch 2 is being read
            assert manage.cancel_import(self.imp.pk, by=operator).cancelled
        original(self, fields, lines)

    monkeypatch.setattr(import_run._ImportRun, "add_row", cancel_on_the_third_row)
    imp = run("email\na@acme.com\nb@beta.io\nc@gamma.io\nd@delta.io\ne@eps.io\n")

    assert imp.state == LeadImport.State.CANCELLED
    assert sorted(Lead.objects.values_list("line", "state")) == [(2, S.DISCARDED), (3, S.DISCARDED)]
    assert imp.total_rows == 2  # the counts of the last committed batch


def test_cancel_discards_only_leads_clay_has_not_taken(operator, webhook, db):
    imp = make_lead_import(state=LeadImport.State.RUNNING, heartbeat_at=timezone.now())
    states = [
        S.QUEUED,
        S.DEFERRED,
        S.RETRY_WAIT,
        S.SERVED_CACHE,
        S.SUBMITTING,
        S.UNCERTAIN,
        S.ACCEPTED,
        S.ENRICHED,
        S.DEAD,
    ]
    leads = {
        state: make_lead(i, webhook=webhook, lead_import=imp, state=state) for i, state in enumerate(states)
    }
    elsewhere = make_lead(99, webhook=webhook, state=S.QUEUED)  # another import's queued lead

    result = manage.cancel_import(imp.pk, by=operator)

    assert result.cancelled and result.discarded == 4
    after = dict(Lead.objects.filter(lead_import=imp).values_list("pk", "state"))
    for state, lead in leads.items():
        expected = S.DISCARDED if state in manage.UNSENT_STATES else state
        assert after[lead.pk] == expected, state
    assert Lead.objects.get(pk=elsewhere.pk).state == S.QUEUED


def test_a_pending_import_cancelled_before_its_job_runs_is_never_read(operator, db):
    imp = upload("email\na@acme.com\n")
    assert manage.cancel_import(imp.pk, by=operator).cancelled
    after = run_import(imp.pk)
    assert after is not None and after.state == LeadImport.State.CANCELLED
    assert not Lead.objects.exists() and after.total_rows == 0


def test_a_second_cancel_and_a_cancel_of_a_finished_import_change_nothing(operator, db):
    running = make_lead_import(state=LeadImport.State.RUNNING)
    done = make_lead_import(state=LeadImport.State.DONE)

    first = manage.cancel_import(running.pk, by=operator)
    cancelled_at = LeadImport.objects.get(pk=running.pk).cancelled_at
    second = manage.cancel_import(running.pk, by=make_user("other", role="operators"))
    finished = manage.cancel_import(done.pk, by=operator)

    assert first.cancelled and not second.cancelled and not finished.cancelled
    assert "cancelled already" in second.message and "is done" in finished.message
    running.refresh_from_db()
    assert running.cancelled_by == operator and running.cancelled_at == cancelled_at
    assert LeadImport.objects.get(pk=done.pk).state == LeadImport.State.DONE
    assert AuditEntry.objects.filter(action="import_cancel").count() == 1
    assert manage.cancel_import(999999).state is None


@pytest.mark.django_db(transaction=True)
def test_of_two_cancels_at_once_one_wins(operator):
    imp = make_lead_import(state=LeadImport.State.RUNNING)
    users = [operator, make_user("other", role="operators")]
    barrier = threading.Barrier(2)
    results: list[manage.CancelResult] = []

    def cancel(user):
        try:
            barrier.wait()
            results.append(manage.cancel_import(imp.pk, by=user))
        finally:
            connection.close()

    threads = [threading.Thread(target=cancel, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(r.cancelled for r in results) == [False, True]
    imp.refresh_from_db()
    assert imp.state == LeadImport.State.CANCELLED and imp.cancelled_by in users
    assert AuditEntry.objects.filter(action="import_cancel").count() == 1
    assert AuditEntry.objects.get(action="import_cancel").user == imp.cancelled_by


def test_the_cancel_view_cancels_audits_and_shows_who_and_when(client, operator, db):
    imp = make_lead_import(state=LeadImport.State.RUNNING, heartbeat_at=timezone.now())
    queued = make_lead(1, lead_import=imp, state=S.QUEUED)
    client.force_login(operator)
    page = client.get(reverse("dashboard:import_detail", args=[imp.pk])).content.decode()
    assert reverse("dashboard:import_cancel", args=[imp.pk]) in page and "Cancel import" in page

    r = client.post(reverse("dashboard:import_cancel", args=[imp.pk]), follow=True)

    assert r.redirect_chain == [(reverse("dashboard:import_detail", args=[imp.pk]), 302)]
    html = r.content.decode()
    assert "Import cancelled: 1 unsent lead discarded." in html
    imp.refresh_from_db()
    stamp = timezone.localtime(imp.cancelled_at).strftime("%Y-%m-%d %H:%M:%S")
    assert "Cancelled by <strong>olga</strong> at" in html and stamp in html
    assert "Cancel import" not in html  # finished: no button any more
    assert Lead.objects.get(pk=queued.pk).state == S.DISCARDED
    assert AuditEntry.objects.get(action="import_cancel").user == operator
    status = client.get(reverse("dashboard:import_detail", args=[imp.pk]), **HX)
    assert status.status_code == 286  # the status partial stops polling


def test_cancelling_a_finished_or_cancelled_import_is_a_409_with_the_reason(client, operator, db):
    done = make_lead_import(state=LeadImport.State.DONE)
    running = make_lead_import(state=LeadImport.State.RUNNING)
    client.force_login(operator)

    r = client.post(reverse("dashboard:import_cancel", args=[done.pk]))
    assert r.status_code == 409
    assert "This import is done: only a pending or running import can be cancelled." in r.content.decode()
    assert LeadImport.objects.get(pk=done.pk).state == LeadImport.State.DONE

    assert client.post(reverse("dashboard:import_cancel", args=[running.pk])).status_code == 302
    again = client.post(reverse("dashboard:import_cancel", args=[running.pk]), **HX)
    assert again.status_code == 409
    assert again["HX-Redirect"] == reverse("dashboard:import_detail", args=[running.pk])
    follow = client.get(again["HX-Redirect"]).content.decode()
    assert "This import was cancelled already: nothing to do." in follow
    assert AuditEntry.objects.filter(action="import_cancel").count() == 1
    assert client.post(reverse("dashboard:import_cancel", args=[999999])).status_code == 404


# --- Group retry and discard --------------------------------------------------------------------


def import_with_dlq(webhook, n: int = 3) -> tuple[LeadImport, list[DeadLetter]]:
    imp = make_lead_import(webhook=webhook)
    entries = [
        make_dead_letter(
            i,
            webhook=webhook,
            lead=make_lead(i, webhook=webhook, lead_import=imp, line=i + 2, state=S.DEAD, attempt_count=5),
        )
        for i in range(n)
    ]
    return imp, entries


@respx.mock
def test_group_retry_goes_through_the_budget_so_an_exhausted_budget_defers_the_leads(
    client, operator, webhook, django_capture_on_commit_callbacks
):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    budget = webhook.workspace.budget
    budget.daily_limit = Decimal("0")
    budget.save()
    imp, entries = import_with_dlq(webhook)
    exhausted = entries[2]
    DeadLetter.objects.filter(pk=exhausted.pk).update(state=DeadLetter.State.EXHAUSTED)
    other = make_dead_letter(9, webhook=webhook)  # another import's entry
    client.force_login(operator)
    page = client.get(reverse("dashboard:import_detail", args=[imp.pk])).content.decode()
    # The forecast before acting: a limit of 0 parks all three; the choice says so.
    assert "Retry all 3 (3 parked past the budget)" in page and "Discard 3 DLQ entries" in page
    assert "Retry 0 within today" in page

    with django_capture_on_commit_callbacks(execute=True):
        r = client.post(reverse("dashboard:import_dlq_retry", args=[imp.pk]), {"scope": "all"}, follow=True)

    assert "3 retried." in r.content.decode()
    assert "No lead of this import is in the DLQ." in r.content.decode()
    lead_ids = [e.lead_id for e in entries]
    assert set(DeadLetter.objects.filter(pk__in=[e.pk for e in entries]).values_list("state", flat=True)) == {
        "retrying"
    }
    assert set(Lead.objects.filter(pk__in=lead_ids).values_list("state", flat=True)) == {S.QUEUED}
    delivery.submit_batch(lead_ids)  # the submission job the retry enqueued
    assert route.call_count == 0  # the budget refused: nothing went to Clay
    assert set(Lead.objects.filter(pk__in=lead_ids).values_list("state", "defer_reason")) == {
        (S.DEFERRED, "daily credit budget exhausted")
    }
    assert DeadLetter.objects.get(pk=other.pk).state == "pending"
    group = AuditEntry.objects.get(action="import_dlq_retry")
    assert (group.user, group.target, group.count) == (operator, f"import:{imp.pk}", 3)
    assert AuditEntry.objects.get(action="dlq_retry").count == 3  # the DLQ's own retry service


@respx.mock
def test_group_retry_sends_what_the_budget_pays_for(operator, webhook):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    budget = webhook.workspace.budget
    budget.daily_limit = Decimal("6")  # one row at the webhook's 6 credits
    budget.save()
    imp, entries = import_with_dlq(webhook, n=2)

    assert manage.retry_import_dlq(imp.pk, by=operator) == manage.GroupResult(asked=2, done=2)
    delivery.submit_batch([e.lead_id for e in entries])

    assert route.call_count == 1
    states = sorted(Lead.objects.filter(pk__in=[e.lead_id for e in entries]).values_list("state", flat=True))
    assert states == [S.ACCEPTED, S.DEFERRED]


def test_group_discard_discards_the_import_entries_and_their_leads(client, operator, webhook):
    imp, entries = import_with_dlq(webhook, n=2)
    other = make_dead_letter(9, webhook=webhook)
    client.force_login(operator)

    r = client.post(reverse("dashboard:import_dlq_discard", args=[imp.pk]), follow=True)

    assert "2 discarded." in r.content.decode()
    assert set(DeadLetter.objects.filter(pk__in=[e.pk for e in entries]).values_list("state", flat=True)) == {
        "discarded"
    }
    assert set(Lead.objects.filter(lead_import=imp).values_list("state", flat=True)) == {S.DISCARDED}
    assert DeadLetter.objects.get(pk=other.pk).state == "pending"
    group = AuditEntry.objects.get(action="import_dlq_discard")
    assert (group.user, group.count) == (operator, 2)
    again = client.post(reverse("dashboard:import_dlq_discard", args=[imp.pk]), follow=True)
    assert "No lead of this import is in the DLQ: nothing to do." in again.content.decode()


def test_viewers_see_the_counts_but_get_403_on_every_action(client, viewer, webhook):
    imp, entries = import_with_dlq(webhook, n=2)
    running = make_lead_import(state=LeadImport.State.RUNNING)
    client.force_login(viewer)

    page = client.get(reverse("dashboard:import_detail", args=[imp.pk])).content.decode()
    assert "2</strong> leads of this import are in the DLQ" in page
    assert "Retry 2 failed leads" not in page and "Discard 2" not in page
    assert (
        "Cancel import"
        not in client.get(reverse("dashboard:import_detail", args=[running.pk])).content.decode()
    )

    for name, pk in (
        ("dashboard:import_cancel", running.pk),
        ("dashboard:import_dlq_retry", imp.pk),
        ("dashboard:import_dlq_discard", imp.pk),
    ):
        assert client.post(reverse(name, args=[pk])).status_code == 403, name
    assert LeadImport.objects.get(pk=running.pk).state == LeadImport.State.RUNNING
    assert set(DeadLetter.objects.values_list("state", flat=True)) == {"pending"}
    assert not AuditEntry.objects.exists()


def test_group_retry_forecast_counts_credits_and_actions_and_within_budget_retries_only_what_fits(
    client, operator, webhook, django_capture_on_commit_callbacks
):
    budget = webhook.workspace.budget
    budget.daily_limit, budget.actions_daily_limit = Decimal("1000"), 4  # credits for all, Actions for 2
    budget.save()
    Webhook.objects.filter(pk=webhook.pk).update(credits_per_row=Decimal("6"), actions_per_row=2)
    imp, entries = import_with_dlq(webhook, n=5)
    client.force_login(operator)

    page = client.get(reverse("dashboard:import_detail", args=[imp.pk])).content.decode()

    forecast = page.split('data-testid="import-retry-forecast"')[1].split("</ul>")[0]
    assert "needs 30.00 credits" in forecast or "needs 30 credits" in forecast
    assert "10 Clay Actions, 4 left today" in forecast
    assert "<strong>2</strong> fit today" in forecast and "3 would be parked" in forecast
    assert "Retry 2 within today" in page and "Retry all 5 (3 parked past the budget)" in page

    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("dashboard:import_dlq_retry", args=[imp.pk]), {"scope": "budget"})

    states = dict(DeadLetter.objects.filter(pk__in=[e.pk for e in entries]).values_list("pk", "state"))
    assert [states[e.pk] for e in entries] == ["retrying", "retrying", "pending", "pending", "pending"]
