"""The dashboard in a real browser: login, live overview, upload with progress, DLQ bulk actions, roles."""

from __future__ import annotations

import re

import django_rq
from django.utils import timezone
from playwright.sync_api import expect

from clayops.models import CircuitBreaker, LeadImport
from tests.factories import make_dead_letters

from .conftest import assert_not_reloaded, mark_page


def test_it_logs_in_through_the_form(page, operator):
    page.goto("/dlq/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/dlq/"))
    page.get_by_label("Username").fill("olga")
    page.get_by_label("Password").fill("pw-operator-1")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/dlq/$"))
    expect(page.get_by_role("heading", name="Dead letter queue")).to_be_visible()


def test_it_shows_the_circuit_open_without_a_reload(page, login_as, viewer, webhook):
    login_as(viewer)
    page.goto("/")
    state = page.locator(f"#webhook-{webhook.pk} [data-testid=circuit-state]")
    expect(state).to_contain_text("Closed")
    mark_page(page)

    CircuitBreaker.objects.filter(webhook=webhook).update(
        state=CircuitBreaker.State.OPEN, opened_at=timezone.now(), cooldown_seconds=60
    )

    expect(state).to_contain_text("Open", timeout=6000)
    expect(page.locator(f"#webhook-{webhook.pk} .countdown")).to_contain_text(re.compile(r"\d+ s"))
    assert_not_reloaded(page)


def test_it_uploads_a_csv_and_the_progress_bar_finishes(
    page, login_as, operator, webhook, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    login_as(operator)
    page.goto("/imports/")
    mark_page(page)
    csv = "email,company\nann@acme.com,Acme\nnot-an-email,\nbob@beta.io,Beta\nann@acme.com,Acme\n"
    page.get_by_label("CSV file").set_input_files(
        {"name": "leads.csv", "mimeType": "text/csv", "buffer": csv.encode()}
    )
    page.get_by_role("button", name="Upload and import").click()
    status = page.locator("#upload .import-status")
    expect(status).to_contain_text("leads.csv")
    expect(status).to_have_attribute("data-state", "pending")

    django_rq.get_worker("default").work(burst=True)  # the import job, in a forked child

    expect(status).to_have_attribute("data-state", "done", timeout=6000)
    expect(status.locator("progress")).to_have_attribute("value", "100")
    expect(status.get_by_test_id("valid-rows")).to_have_text("2")
    expect(status).to_contain_text("First invalid rows")
    expect(page.locator("#import-list")).to_contain_text("leads.csv")
    assert_not_reloaded(page)
    imp = LeadImport.objects.get()
    page.get_by_role("link", name="Leads of this import »").click()
    expect(page).to_have_url(re.compile(rf"/leads/\?lead_import={imp.pk}$"))
    expect(page.locator("#results")).to_contain_text("bob@beta.io")


def test_it_retries_and_discards_dlq_entries_with_checkboxes(page, login_as, operator, webhook):
    a, b, c = make_dead_letters(3, webhook=webhook)
    login_as(operator)
    page.goto("/dlq/")
    mark_page(page)
    retry = page.get_by_role("button", name="Retry selected")
    expect(retry).to_be_disabled()
    page.get_by_label(f"Select entry {a.pk}").check()
    page.get_by_label(f"Select entry {b.pk}").check()
    expect(page.locator("[data-selected-count]")).to_have_text("2 selected")
    retry.click()
    expect(page.get_by_test_id("dlq-message")).to_have_text("Retried 2 entries.")
    expect(page.locator(f"#dlq-row-{a.pk}")).to_have_count(0)
    expect(page.locator(f"#dlq-row-{c.pk}")).to_have_count(1)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_label(f"Select entry {c.pk}").check()
    page.get_by_role("button", name="Discard selected").click()
    expect(page.get_by_test_id("dlq-message")).to_have_text("Discarded 1 entry.")
    expect(page.locator("#dlq-table")).to_contain_text("No entries match.")
    assert_not_reloaded(page)
    c.refresh_from_db()
    assert c.state == "discarded"


def test_it_previews_and_confirms_a_drain(page, login_as, operator, webhook):
    make_dead_letters(2, webhook=webhook)
    login_as(operator)
    page.goto("/dlq/")
    page.get_by_role("link", name="Drain…").click()
    expect(page.get_by_test_id("drain-summary")).to_contain_text("leads/s")
    expect(page.get_by_test_id("drain-summary")).to_contain_text("credits")
    page.get_by_role("button", name="Drain 2 now").click()
    expect(page.get_by_test_id("dlq-message")).to_contain_text("Draining 2 entries")


def test_it_hides_actions_from_a_viewer_and_refuses_a_forged_post(page, login_as, viewer, webhook):
    make_dead_letters(1, webhook=webhook)
    login_as(viewer)
    page.goto("/")
    expect(page.locator(f"#webhook-{webhook.pk}")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Pause|Reset"))).to_have_count(0)
    page.goto("/dlq/")
    expect(page.locator("input[name=ids]")).to_have_count(0)
    expect(page.get_by_role("button", name="Retry selected")).to_have_count(0)
    status = page.evaluate(
        """async (url) => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const r = await fetch(url, {method: 'POST', headers: {'X-CSRFToken': token}});
            return r.status;
        }""",
        f"/webhooks/{webhook.pk}/force-open",
    )
    assert status == 403
    assert CircuitBreaker.objects.get(webhook=webhook).state == "closed"
