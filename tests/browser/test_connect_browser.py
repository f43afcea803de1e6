"""The "Connect Clay" page in Chromium, as an operator: fill the form, read what to type into Clay,
copy it (clipboard, or the text selected when the clipboard is refused), configure the Clay simulator
with exactly what the page shows (as an operator configures Clay's HTTP API column), send a test row
and watch it turn green when the simulator's callback comes back."""

from __future__ import annotations

import re

import django_rq
from playwright.sync_api import expect

from clayops.contract import CALLBACK_HEADER
from clayops.models import AuditEntry, Lead, Webhook
from tests.factories import make_workspace
from tests.fixtures_sim import clay_sim as _clay_sim  # noqa: F401

from .conftest import assert_not_reloaded, mark_page

TABLE = "t_browser"


def _fill_form(page, url: str) -> None:
    page.goto("/connect/")
    page.get_by_label("Clay webhook URL").fill(url)
    page.get_by_label("Webhook auth token (optional)").fill("tok-browser")
    page.get_by_label("Name in clayops").fill("browser table")
    page.get_by_label("New workspace name").fill("browser-ws")


def test_it_connects_a_table_and_a_test_row_turns_green_when_clay_calls_back(
    page, context, login_as, operator, clay_sim, live_server
):
    login_as(operator)
    _fill_form(page, clay_sim.webhook_url(TABLE))
    # The plan's presets fill the limits (static/clayops/connect.js).
    hourly = page.get_by_label("Hourly cap (rows/hour)")
    expect(hourly).to_have_value("")  # the default plan (Pro) has no hourly cap
    page.get_by_label("Clay plan").select_option("free")
    expect(hourly).to_have_value("500")
    expect(page.get_by_label("Burst (rows)")).to_have_value("20")
    expect(page.get_by_label("Lifetime row cap")).to_have_value("50000")
    page.get_by_role("button", name="Connect", exact=True).click()

    webhook = Webhook.objects.select_related("workspace").get()
    assert webhook.workspace.name == "browser-ws" and webhook.workspace.hourly_cap == 500
    expect(page).to_have_url(re.compile(rf"/connect/{webhook.pk}/$"))
    callback_url = page.get_by_test_id("callback-url").inner_text()
    assert callback_url == f"{live_server.url}/api/clay/callback/{webhook.pk}/"
    expect(page.locator("#header-name")).to_have_text(CALLBACK_HEADER)
    secret = page.get_by_test_id("callback-secret").inner_text()
    assert secret == webhook.callback_secret
    expect(page.get_by_test_id("body-template")).to_contain_text('"clayops_lead_id"')

    # Copy: the callback URL lands on the clipboard.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    copy = page.locator("button[data-copy=callback-url]")
    copy.click()
    expect(copy).to_have_attribute("data-copied", "clipboard")
    assert page.evaluate("navigator.clipboard.readText()") == callback_url

    # In "Clay" (the simulator): the HTTP API column with what the page showed.
    clay_sim.configure_table(
        TABLE,
        token="tok-browser",
        callback_url=callback_url,
        callback_headers={page.locator("#header-name").inner_text(): secret},
        callback_delay_s=0.2,
    )

    mark_page(page)
    status = page.get_by_test_id("test-row-status")
    expect(status).to_contain_text("No test row sent yet")
    page.get_by_role("button", name="Send a test row").click()
    expect(status).to_have_attribute("data-state", "queued")
    lead = Lead.objects.get(webhook=webhook)

    django_rq.get_worker("submit").work(burst=True)  # the submission job, in a forked child

    expect(status).to_contain_text("Callback received at", timeout=15000)
    expect(status.locator(".badge.tone-ok")).to_be_visible()
    assert_not_reloaded(page)
    lead.refresh_from_db()
    assert lead.state == Lead.State.ENRICHED and lead.enriched["company_name"] == "Clay"
    assert clay_sim.received(lead.pk) == 1
    assert AuditEntry.objects.filter(action="test_row_sent").count() == 1

    # Reloaded, the page no longer shows the secret.
    page.reload()
    expect(page.get_by_test_id("masked-secret")).to_be_visible()
    assert secret not in page.content()


def test_copy_selects_the_text_when_the_clipboard_is_refused(page, login_as, operator, clay_sim):
    page.add_init_script("navigator.clipboard.writeText = () => Promise.reject(new Error('denied'));")
    login_as(operator)
    _fill_form(page, clay_sim.webhook_url(TABLE))
    page.get_by_role("button", name="Connect", exact=True).click()
    secret = page.get_by_test_id("callback-secret").inner_text()

    copy = page.locator("button[data-copy=callback-secret]")
    copy.click()

    expect(copy).to_have_attribute("data-copied", re.compile("clipboard|selected"))
    assert page.evaluate("window.getSelection().toString()") == secret


def test_a_refused_url_shows_a_form_error_and_creates_nothing(page, login_as, operator):
    login_as(operator)
    _fill_form(page, "https://evil.example.com/v3/sources/webhook/t_x")
    page.get_by_role("button", name="Connect", exact=True).click()

    expect(page.locator("[data-field-errors=webhook_url]")).to_contain_text("not an allowed destination")
    expect(page.get_by_test_id("form-error-summary")).to_be_visible()
    assert not Webhook.objects.exists()


def test_it_adds_a_webhook_to_an_existing_workspace(page, login_as, operator, clay_sim):
    workspace = make_workspace(name="existing-ws", rate_limit=3)
    login_as(operator)
    page.goto("/connect/")
    page.get_by_label("Clay webhook URL").fill(clay_sim.webhook_url(TABLE))
    page.get_by_label("Workspace", exact=True).select_option(label="existing-ws")
    # An existing workspace keeps its own limits and budget: those fields go away.
    expect(page.get_by_label("New workspace name")).to_be_hidden()
    expect(page.get_by_label("Daily credit budget")).to_be_hidden()
    page.get_by_role("button", name="Connect", exact=True).click()

    expect(page.get_by_test_id("callback-secret")).to_be_visible()
    webhook = Webhook.objects.get()
    assert webhook.workspace == workspace and webhook.name == "Clay table"
    workspace.refresh_from_db()
    assert workspace.rate_limit == 3
