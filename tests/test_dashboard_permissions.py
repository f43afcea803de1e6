"""Every action: anonymous → login, GET → 405, viewer and outsider → 403, CSRF enforced."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from clayops.models import AuditEntry, CircuitBreaker
from tests.factories import make_user

PAGES = ["overview", "leads", "imports", "dlq", "audit", "dlq_drain_preview"]
GLOBAL_ACTIONS = ["import_upload", "dlq_retry", "dlq_discard", "dlq_drain"]
WEBHOOK_ACTIONS = ["breaker_force_open", "breaker_reset", "offline_drain"]


@pytest.fixture
def actions(webhook):
    return [reverse(f"dashboard:{name}") for name in GLOBAL_ACTIONS] + [
        reverse(f"dashboard:{name}", args=[webhook.pk]) for name in WEBHOOK_ACTIONS
    ]


@pytest.mark.parametrize("name", PAGES)
def test_it_redirects_anonymous_pages_to_login(client, name):
    r = client.get(reverse(f"dashboard:{name}"))
    assert r.status_code == 302 and r["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize("name", PAGES)
def test_it_shows_pages_to_viewers_and_forbids_outsiders(client, name, viewer, outsider, webhook):
    client.force_login(viewer)
    assert client.get(reverse(f"dashboard:{name}")).status_code == 200
    client.force_login(outsider)
    assert client.get(reverse(f"dashboard:{name}")).status_code == 403


def test_it_redirects_anonymous_actions_to_login(client, actions):
    for url in actions:
        r = client.post(url)
        assert r.status_code == 302 and r["Location"].startswith(reverse("login")), url


def test_it_answers_405_to_get_on_actions(client, operator, actions):
    client.force_login(operator)
    for url in actions:
        assert client.get(url).status_code == 405, url


def test_it_forbids_actions_to_viewers_and_outsiders(client, viewer, outsider, actions, webhook):
    for user in (viewer, outsider):
        client.force_login(user)
        for url in actions:
            assert client.post(url, {"ids": ["1"]}).status_code == 403, url
    assert not AuditEntry.objects.exists()
    assert CircuitBreaker.objects.get(webhook=webhook).state == "closed"


def test_it_requires_the_csrf_token(operator, webhook):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    url = reverse("dashboard:breaker_force_open", args=[webhook.pk])
    assert client.post(url).status_code == 403
    page = client.get(reverse("dashboard:overview"))
    token = page.cookies["csrftoken"].value
    assert client.post(url, HTTP_X_CSRFTOKEN=token, HTTP_HX_REQUEST="true").status_code == 200
    assert CircuitBreaker.objects.get(webhook=webhook).state == "forced_open"


def test_it_sends_the_csrf_token_with_every_htmx_request(client, operator):
    client.force_login(operator)
    html = client.get(reverse("dashboard:overview")).content.decode()
    assert 'hx-headers=\'{"X-CSRFToken": "' in html


def test_it_shows_the_admin_link_to_staff_only(client, viewer):
    client.force_login(viewer)
    assert 'href="/admin/"' not in client.get(reverse("dashboard:overview")).content.decode()
    staff = make_user("sam", password="x", is_staff=True, is_superuser=True)
    client.force_login(staff)
    assert 'href="/admin/"' in client.get(reverse("dashboard:overview")).content.decode()


def test_it_serves_htmx_from_django_htmx_static_files(client, viewer):
    client.force_login(viewer)
    html = client.get(reverse("dashboard:overview")).content.decode()
    assert "/static/django_htmx/htmx-2.min.js" in html and "//cdn" not in html


def test_it_sends_an_htmx_poll_without_a_session_to_the_login_page(client, db):
    r = client.get(
        reverse("dashboard:overview"), HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/dlq/"
    )
    assert r["HX-Redirect"] == reverse("login") + "?next=/dlq/"
