"""DLQ: filters, groups, keyset pages, entry detail, bulk retry/discard and drain with confirmation."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from clayops.models import Attempt, AuditEntry, Lead
from tests.factories import make_dead_letter

HX = {"HTTP_HX_REQUEST": "true"}


def rows(html):
    """The entry ids of the table's rows, in page order."""
    return [int(pk) for pk in re.findall(r'id="dlq-row-(\d+)"', html)]


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()  # the error-class list is cached


@pytest.fixture
def url():
    return reverse("dashboard:dlq")


def test_it_redirects_anonymous_to_login(client, url):
    assert client.get(url).status_code == 302


def test_it_lists_pending_entries_with_groups(client, url, viewer, webhook):
    make_dead_letter(1, webhook=webhook, error_class="server_error")
    make_dead_letter(2, webhook=webhook, error_class="server_error")
    make_dead_letter(3, webhook=webhook, error_class="payload_too_large")
    make_dead_letter(4, webhook=webhook, state="discarded")
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert "d1@x.com" in html and "d3@x.com" in html and "d4@x.com" not in html
    assert "<span>server_error</span> <strong>2</strong>" in html
    assert "<span>payload_too_large</span> <strong>1</strong>" in html


def test_it_filters_by_error_class_webhook_and_date(client, url, viewer, webhook):
    old = timezone.now() - timedelta(days=3)
    make_dead_letter(1, webhook=webhook, error_class="server_error")
    make_dead_letter(2, webhook=webhook, error_class="timeout")
    make_dead_letter(3, webhook=webhook, error_class="server_error", created_at=old)
    client.force_login(viewer)
    today = timezone.localdate().isoformat()
    html = client.get(
        url, {"error_class": "server_error", "webhook": webhook.pk, "since": today}
    ).content.decode()
    assert "d1@x.com" in html and "d2@x.com" not in html and "d3@x.com" not in html
    html = client.get(url, {"until": (timezone.localdate() - timedelta(days=1)).isoformat()}).content.decode()
    assert "d3@x.com" in html and "d1@x.com" not in html


def test_it_paginates_by_created_at_and_id(client, url, viewer, webhook):
    at = timezone.now()
    entries = [make_dead_letter(i, webhook=webhook, created_at=at) for i in range(3)]  # the id breaks ties
    client.force_login(viewer)
    first = client.get(url, {"size": 2}).content.decode()
    assert "d2@x.com" in first and "d1@x.com" in first and "d0@x.com" not in first
    assert rows(first) == [entries[2].pk, entries[1].pk]
    cursor = first.split("cursor=")[1].split('"')[0].split("&")[0]
    second = client.get(url, {"size": 2, "cursor": cursor}).content.decode()
    assert "d0@x.com" in second and "d1@x.com" not in second
    assert rows(second) == [entries[0].pk]


def test_it_returns_the_results_partial_for_htmx(client, url, viewer, webhook):
    make_dead_letter(1, webhook=webhook)
    client.force_login(viewer)
    html = client.get(url, {"error_class": "server_error"}, **HX).content.decode()
    assert "<html" not in html and html.strip().startswith('<div id="dlq-results"')


def test_it_shows_no_checkboxes_or_buttons_to_viewers(client, url, viewer, webhook):
    make_dead_letter(1, webhook=webhook)
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert 'name="ids"' not in html and "Retry selected" not in html and "Drain" not in html


def test_it_shows_checkboxes_and_buttons_to_operators(client, url, operator, webhook):
    entry = make_dead_letter(1, webhook=webhook)
    client.force_login(operator)
    html = client.get(url).content.decode()
    assert f'name="ids" value="{entry.pk}"' in html and "Retry selected" in html and "Drain" in html


def test_it_retries_checked_entries_and_returns_the_table(client, operator, webhook):
    a, b, c = (make_dead_letter(i, webhook=webhook) for i in (1, 2, 3))
    client.force_login(operator)
    r = client.post(reverse("dashboard:dlq_retry"), {"ids": [a.pk, b.pk]}, **HX)
    assert r.status_code == 200
    html = r.content.decode()
    assert html.strip().startswith('<div id="dlq-results"') and "Retried 2 entries." in html
    assert "dlq-changed" in r["HX-Trigger"]
    assert "d1@x.com" not in html and "d3@x.com" in html  # no longer pending
    for entry in (a, b):
        entry.refresh_from_db()
        assert entry.state == "retrying"
    c.refresh_from_db()
    assert c.state == "pending"
    audit = AuditEntry.objects.get(action="dlq_retry")
    assert audit.user == operator and audit.count == 2


def test_it_discards_checked_entries_keeping_the_filters(client, operator, webhook):
    a = make_dead_letter(1, webhook=webhook, error_class="bad_request")
    make_dead_letter(2, webhook=webhook, error_class="server_error")
    client.force_login(operator)
    r = client.post(reverse("dashboard:dlq_discard"), {"ids": [a.pk], "error_class": "bad_request"}, **HX)
    html = r.content.decode()
    assert "Discarded 1 entry." in html and "d2@x.com" not in html  # still filtered
    a.refresh_from_db()
    assert a.state == "discarded" and Lead.objects.get(pk=a.lead_id).state == "discarded"
    assert AuditEntry.objects.get(action="dlq_discard").count == 1


def test_it_redirects_after_an_action_without_htmx(client, operator, webhook):
    a, b = make_dead_letter(1, webhook=webhook), make_dead_letter(2, webhook=webhook)
    client.force_login(operator)
    r = client.post(
        reverse("dashboard:dlq_retry"), {"only": a.pk, "next": reverse("dashboard:dlq_entry", args=[a.pk])}
    )
    assert r.status_code == 302 and r["Location"] == reverse("dashboard:dlq_entry", args=[a.pk])
    a.refresh_from_db()
    assert a.state == "retrying" and Lead.objects.get(pk=a.lead_id).state == Lead.State.QUEUED
    r = client.post(reverse("dashboard:dlq_discard"), {"ids": [b.pk], "next": "https://evil.example/"})
    assert r.status_code == 302 and r["Location"].startswith(reverse("dashboard:dlq"))
    b.refresh_from_db()
    assert b.state == "discarded" and Lead.objects.get(pk=b.lead_id).state == Lead.State.DISCARDED
    assert list(AuditEntry.objects.order_by("id").values_list("action", "count")) == [
        ("dlq_retry", 1),
        ("dlq_discard", 1),
    ]


@pytest.mark.parametrize(
    ("action", "state", "lead_state"),
    [("dashboard:dlq_retry", "retrying", "queued"), ("dashboard:dlq_discard", "discarded", "discarded")],
)
def test_it_touches_only_the_entry_of_a_per_row_button(client, operator, webhook, action, state, lead_state):
    a, b, c = (make_dead_letter(i, webhook=webhook) for i in (1, 2, 3))
    client.force_login(operator)
    # The row's button names its entry in `only`; boxes checked elsewhere on the page do not count.
    r = client.post(reverse(action), {"only": b.pk, "ids": [a.pk, c.pk]}, **HX)
    assert r.status_code == 200
    for entry in (a, b, c):
        entry.refresh_from_db()
    assert (b.state, Lead.objects.get(pk=b.lead_id).state) == (state, lead_state)
    for untouched in (a, c):
        assert untouched.state == "pending" and untouched.retry_count == 0
        assert Lead.objects.get(pk=untouched.lead_id).state == Lead.State.DEAD


def test_it_says_so_when_nothing_is_selected(client, operator, webhook):
    make_dead_letter(1, webhook=webhook)
    client.force_login(operator)
    html = client.post(reverse("dashboard:dlq_retry"), {}, **HX).content.decode()
    assert "Select at least one entry first." in html
    assert AuditEntry.objects.count() == 0


def test_it_previews_a_drain_with_count_rate_and_cost(client, operator, webhook, settings):
    settings.CLAYOPS_DRAIN_RATE = 5.0
    webhook.credits_per_row = Decimal("6")
    webhook.save()
    for i in range(3):
        make_dead_letter(i, webhook=webhook, error_class="server_error")
    make_dead_letter(9, webhook=webhook, error_class="timeout")
    client.force_login(operator)
    r = client.get(reverse("dashboard:dlq_drain_preview"), {"error_class": "server_error"}, **HX)
    html = r.content.decode()
    assert r.status_code == 200 and "<html" not in html
    assert "Drain 3 pending entries?" in html
    assert "5 leads/s" in html and "18 credits" in html
    assert 'name="error_class" value="server_error"' in html
    assert not AuditEntry.objects.exists()  # a preview is not an action


def test_it_drains_after_confirmation(client, operator, webhook, settings):
    settings.CLAYOPS_DRAIN_RATE = 2.0
    settings.CLAYOPS_TICK_SECONDS = 1
    entries = [make_dead_letter(i, webhook=webhook) for i in range(3)]
    client.force_login(operator)
    before = timezone.now()
    r = client.post(reverse("dashboard:dlq_drain"), {"webhook": webhook.pk}, **HX)
    assert r.status_code == 200 and "Draining 3 entries" in r.content.decode()
    audit = AuditEntry.objects.get(action="dlq_drain")
    assert audit.user == operator and audit.count == 3
    for entry in entries:
        entry.refresh_from_db()
    # One tick's worth (2 per second x 1 s) is resubmitted at once; the third is due for the next tick.
    retrying = [e for e in entries if e.state == "retrying"]
    waiting = [e for e in entries if e.state == "pending"]
    assert len(retrying) == 2 and len(waiting) == 1
    assert all(
        e.retry_count == 1 and Lead.objects.get(pk=e.lead_id).state == Lead.State.QUEUED for e in retrying
    )
    (left,) = waiting
    assert left.retry_count == 0 and before <= left.next_retry_at <= timezone.now()
    assert Lead.objects.get(pk=left.lead_id).state == Lead.State.DEAD


def test_it_shows_the_entry_with_attempts_and_payload(client, viewer, webhook):
    entry = make_dead_letter(1, webhook=webhook, status_code=500)
    Attempt.objects.create(
        lead=entry.lead,
        webhook=webhook,
        status_code=500,
        latency_ms=812,
        error_class="server_error",
        error="boom",
        outcome="dead",
    )
    client.force_login(viewer)
    html = client.get(reverse("dashboard:dlq_entry", args=[entry.pk])).content.decode()
    assert "&quot;note&quot;: &quot;row 1&quot;" in html
    assert "812 ms" in html and "boom" in html
    assert "Retry this entry" not in html  # viewer


def test_it_counts_unfinished_entries_by_state(client, url, viewer, webhook):
    make_dead_letter(1, webhook=webhook)
    make_dead_letter(2, webhook=webhook, state="exhausted")
    make_dead_letter(3, webhook=webhook, state="exhausted")
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert "exhausted 2</a>" in html and "pending 1</a>" in html
    html = client.get(url, {"state": "exhausted"}).content.decode()
    assert "d2@x.com" in html and "d1@x.com" not in html


def test_it_serves_the_drain_confirmation_as_a_page_that_posts_without_htmx(client, operator, webhook):
    make_dead_letter(1, webhook=webhook)
    client.force_login(operator)
    html = client.get(reverse("dashboard:dlq_drain_preview")).content.decode()
    assert "<html" in html and "Drain 1 pending entry?" in html
    assert f'action="{reverse("dashboard:dlq_drain")}"' in html and "hx-post" not in html


def test_it_keeps_an_error_class_newer_than_the_cached_list(client, operator, webhook):
    make_dead_letter(1, webhook=webhook, error_class="server_error")
    client.force_login(operator)
    client.get(reverse("dashboard:dlq"))  # caches the list of classes
    make_dead_letter(2, webhook=webhook, error_class="brand_new")
    html = client.get(
        reverse("dashboard:dlq_drain_preview"), {"error_class": "brand_new"}, **HX
    ).content.decode()
    assert "Drain 1 pending entry?" in html and "brand_new" in html


def test_it_renders_the_overview_without_webhooks(client, viewer):
    client.force_login(viewer)
    assert "No webhooks yet" in client.get(reverse("dashboard:overview")).content.decode()


def test_it_shows_new_counts_right_after_an_operators_action(client, url, operator, webhook):
    a = make_dead_letter(1, webhook=webhook)
    make_dead_letter(2, webhook=webhook)
    client.force_login(operator)
    assert "<span>server_error</span> <strong>2</strong>" in client.get(url).content.decode()  # now cached

    client.post(reverse("dashboard:dlq_retry"), {"ids": [a.pk]}, **HX)

    html = client.get(url).content.decode()
    assert "<span>server_error</span> <strong>1</strong>" in html and "pending 1</a>" in html
