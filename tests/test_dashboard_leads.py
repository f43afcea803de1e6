"""Leads: searchable, filterable keyset-paginated list and the detail page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from clayops.models import Attempt, Lead
from tests.factories import make_lead, make_lead_import

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def url():
    return reverse("dashboard:leads")


def test_it_redirects_anonymous_to_login(client, url):
    assert client.get(url).status_code == 302


def test_it_lists_leads_newest_first(client, url, viewer, webhook):
    a, b = make_lead(1, webhook=webhook), make_lead(2, webhook=webhook)
    client.force_login(viewer)
    html = client.get(url).content.decode()
    assert html.index(b.email) < html.index(a.email)


@pytest.mark.parametrize(
    ("q", "found"),
    [
        ("p1@acme1.com", "p1@"),
        ("acme2.com", "p2@"),
        ("acme 3", "p3@"),
        ("acme1", "p1@"),
        ("ACME3.COM", "p3@"),
    ],
)
def test_it_searches_email_domain_and_company(client, url, viewer, q, found):
    for i in (1, 2, 3):
        make_lead(i)
    client.force_login(viewer)
    html = client.get(url, {"q": q}).content.decode()
    assert found in html
    others = {"p1@", "p2@", "p3@"} - {found}
    assert not any(o in html for o in others)


def test_it_filters_by_state_webhook_and_import(client, url, viewer, webhook):
    imp = make_lead_import(filename="a.csv")
    make_lead(1, webhook=webhook, state=Lead.State.DEAD, lead_import=imp)
    make_lead(2, webhook=webhook, state=Lead.State.QUEUED, lead_import=imp)
    make_lead(3, state=Lead.State.DEAD)
    client.force_login(viewer)
    html = client.get(url, {"state": "dead", "webhook": webhook.pk, "lead_import": imp.pk}).content.decode()
    assert "p1@" in html and "p2@" not in html and "p3@" not in html


def test_it_ignores_bad_filter_values(client, url, viewer):
    make_lead(1)
    client.force_login(viewer)
    r = client.get(url, {"state": "nonsense", "webhook": "x", "lead_import": "-3", "cursor": "zz"})
    assert r.status_code == 200 and "p1@" in r.content.decode()


def test_it_paginates_by_keyset(client, url, viewer):
    leads = [make_lead(i) for i in range(5)]
    client.force_login(viewer)
    r = client.get(url, {"size": 2})
    html = r.content.decode()
    assert leads[4].email in html and leads[3].email in html and leads[2].email not in html
    assert f"cursor={leads[3].pk}" in html
    second = client.get(url, {"size": 2, "cursor": leads[3].pk}).content.decode()
    assert leads[2].email in second and leads[1].email in second and leads[4].email not in second
    last = client.get(url, {"size": 2, "cursor": leads[1].pk}).content.decode()
    assert leads[0].email in last and "Older" not in last


def test_it_does_not_count_the_table(client, url, viewer):
    make_lead(1)
    client.force_login(viewer)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        r = client.get(url, HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and "p1@acme1.com" in r.content.decode()  # the rows, still listed
    assert not any("COUNT(" in q["sql"].upper() for q in ctx.captured_queries)


def test_it_returns_the_results_partial_for_htmx(client, url, viewer):
    make_lead(1)
    client.force_login(viewer)
    html = client.get(url, {"q": "p1"}, **HX).content.decode()
    assert "<html" not in html and html.strip().startswith('<section id="results"')


def test_it_shows_the_lead_detail_with_payload_enriched_served_and_attempts(client, viewer, webhook):
    one = make_lead(1, webhook=webhook, state=Lead.State.SERVED_CACHE)
    Lead.objects.filter(pk=one.pk).update(
        enriched={"employees": 1234}, served={"industry": "Anvils", "source": "cache"}
    )
    Attempt.objects.create(
        lead=one, webhook=webhook, status_code=503, error_class="server_error", outcome="retry"
    )
    client.force_login(viewer)
    html = client.get(reverse("dashboard:lead_detail", args=[one.pk])).content.decode()
    assert "&quot;first_name&quot;: &quot;P1&quot;" in html  # payload
    assert "&quot;employees&quot;: 1234" in html  # enriched
    assert "Anvils" in html and "served cache" in html  # served
    assert "503" in html and "server_error" in html  # attempts


def test_it_404s_for_a_missing_lead(client, viewer):
    client.force_login(viewer)
    assert client.get(reverse("dashboard:lead_detail", args=[999])).status_code == 404


def test_it_pages_a_state_by_the_time_leads_entered_it(client, url, viewer):
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    leads = [make_lead(i, state=Lead.State.DEAD) for i in range(3)]
    for i, one in enumerate(leads):  # the oldest lead died last
        Lead.objects.filter(pk=one.pk).update(state_changed_at=now - timedelta(minutes=i))
    client.force_login(viewer)
    first = client.get(url, {"state": "dead", "size": 2}).content.decode()
    assert first.index("p0@") < first.index("p1@") and "p2@" not in first
    cursor = first.split("cursor=")[1].split('"')[0].split("&")[0]
    second = client.get(url, {"state": "dead", "size": 2, "cursor": cursor}).content.decode()
    assert "p2@" in second and "p0@" not in second and "p1@" not in second
