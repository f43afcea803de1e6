"""Least privilege, URL by URL: every pattern the resolver knows is walked (so a new URL fails here
until it is added to ACCESS, and to the table in the README) as anonymous, a user with no role, a
viewer and an operator, with GET and POST. GETs never change state (checked on the books)."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from clayops.models import AuditEntry, Lead
from tests.factories import make_dead_letter, make_lead, make_lead_import, make_user

# name → who may do what. "viewer": pages (GET; POST 405). "operator": actions (POST; GET 405).
ACCESS = {
    "dashboard:overview": "viewer",
    "dashboard:leads": "viewer",
    "dashboard:lead_detail": "viewer",
    "dashboard:imports": "viewer",
    "dashboard:import_detail": "viewer",
    "dashboard:import_errors_csv": "viewer",
    "dashboard:import_report": "viewer",
    "dashboard:import_duplicates_csv": "viewer",
    "dashboard:dlq": "viewer",
    "dashboard:dlq_entry": "viewer",
    "dashboard:dlq_drain_preview": "viewer",
    "dashboard:audit": "viewer",
    "dashboard:alerts": "viewer",
    "dashboard:timeline": "viewer",
    "dashboard:timeline_data": "viewer",
    "dashboard:breaker_force_open": "operator",
    "dashboard:breaker_reset": "operator",
    "dashboard:offline_drain": "operator",
    "dashboard:leads_resolve": "operator",
    "dashboard:import_upload": "operator",
    "dashboard:import_cancel": "operator",
    "dashboard:import_dlq_retry": "operator",
    "dashboard:import_dlq_discard": "operator",
    "dashboard:dlq_drain": "operator",
    "dashboard:dlq_retry": "operator",
    "dashboard:dlq_discard": "operator",
    "dashboard:alert_ack": "operator",
    "dashboard:alert_mute": "operator",
    "dashboard:connect": "viewer",
    "dashboard:connect_webhook": "viewer",
    "dashboard:connect_status": "viewer",
    "dashboard:connect_create": "operator",
    "dashboard:connect_rotate": "operator",
    "dashboard:connect_test": "operator",
    "lead-data": "viewer reads, operator serves",
    "clay-callback": "Clay, with the webhook's secret",
    "healthz": "anyone",
    "readyz": "anyone",
    "metrics": "Prometheus, with the metrics token or from an allowed network",
    "login": "anyone",
    "logout": "anyone signed in (POST)",
}
# Mounted apps with their own guard: staff only.
STAFF_PREFIXES = ("admin/", "django-rq/")


def named_patterns(resolver=None, prefix="", namespace=""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            if route.startswith(STAFF_PREFIXES):
                continue
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from named_patterns(entry, route, ns)
        elif isinstance(entry, URLPattern):
            yield f"{namespace}{entry.name}" if entry.name else route, entry


def test_it_has_a_rule_for_every_url():
    names = {name for name, _ in named_patterns()}
    assert names == set(ACCESS), f"add to ACCESS (and the README): {names - set(ACCESS)}"


@pytest.fixture
def world(webhook):
    lead = make_lead(0, webhook=webhook, state=Lead.State.DEFERRED)
    args = {
        "webhook_id": webhook.pk,
        "lead_id": lead.pk,
        "import_id": make_lead_import(webhook=webhook).pk,
        "entry_id": make_dead_letter(0, webhook=webhook).pk,
    }
    users = {
        "anonymous": None,
        "no role": make_user("nora"),
        "viewer": make_user("vera", role="viewers"),
        "operator": make_user("otto", role="operators"),
    }
    return args, users, lead


def url_of(name, pattern, args):
    kwargs = {key: args[key] for key in pattern.pattern.converters}
    return reverse(name, kwargs=kwargs)


def client_for(user):
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.mark.parametrize("who", ["anonymous", "no role", "viewer", "operator"])
def test_it_lets_each_role_do_exactly_what_the_table_says(world, who):
    args, users, lead = world
    client = client_for(users[who])
    # logout last: its POST ends the session the other checks need
    for name, pattern in sorted(named_patterns(), key=lambda item: item[0] == "logout"):
        rule, url = ACCESS[name], url_of(name, pattern, args)
        get, post = client.get(url), client.post(url)
        where = f"{who} {name} {url}"
        if rule == "viewer":
            expected = {"anonymous": 302, "no role": 403}.get(who, 200)
            assert get.status_code == expected, where
            assert post.status_code == 405, where  # pages are GET only, for everyone
        elif rule == "operator":
            assert get.status_code == 405, where  # actions are POST only, for everyone
            if who == "anonymous":
                assert post.status_code == 302 and "/login/" in post["Location"], where
            elif who in ("no role", "viewer"):
                assert post.status_code == 403, where
            else:
                assert post.status_code < 500 and post.status_code not in (401, 403), where
        elif rule == "viewer reads, operator serves":
            expected_get = {"anonymous": 401, "no role": 403}.get(who, 200)
            assert get.status_code == expected_get, where
            assert post.status_code == {"anonymous": 401, "operator": 200}.get(who, 403), where
        elif rule == "Clay, with the webhook's secret":
            assert get.status_code == 405 and post.status_code == 401, where
        elif name == "healthz":
            assert get.status_code == 200 and post.status_code == 405, where
        elif name == "readyz":  # no worker in unit tests: not ready, and it says why
            assert get.status_code == 503 and post.status_code == 405, where
            assert "no live RQ worker" in get.json()["problems"], where
        elif rule.startswith("Prometheus"):
            assert get.status_code == 403 and post.status_code == 405, where  # off until configured
            with override_settings(CLAYOPS_METRICS_TOKEN="t" * 32):
                assert client.get(url).status_code == 401, where  # a dashboard login is no token
        else:  # login / logout
            assert get.status_code in (200, 405) and post.status_code < 500, where


def test_gets_change_nothing(world):
    """Every GET, as an operator (who could change the most): the leads and the audit log are as before."""
    args, users, lead = world
    client = client_for(users["operator"])
    before = (list(Lead.objects.values_list("pk", "state", "served")), AuditEntry.objects.count())
    for name, pattern in named_patterns():
        if name != "logout":
            client.get(url_of(name, pattern, args))
    after = (list(Lead.objects.values_list("pk", "state", "served")), AuditEntry.objects.count())
    assert after == before
