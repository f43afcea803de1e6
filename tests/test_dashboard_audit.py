"""Audit page: who did what, how many, when; filterable."""

from __future__ import annotations

from django.urls import reverse

from clayops.models import AuditEntry

HX = {"HTTP_HX_REQUEST": "true"}


def test_it_redirects_anonymous_to_login(client):
    assert client.get(reverse("dashboard:audit")).status_code == 302


def test_it_lists_entries_with_who_what_how_many(client, viewer, operator):
    AuditEntry.objects.create(user=operator, action="dlq_retry", target="3 dead letters", count=3)
    AuditEntry.objects.create(user=None, action="limit_change", target="budget:1", detail={"to": "500"})
    client.force_login(viewer)
    html = client.get(reverse("dashboard:audit")).content.decode()
    assert "olga" in html and "dlq_retry" in html and "3 dead letters" in html
    assert "system" in html and "to=500" in html


def test_it_filters_by_action_and_user(client, viewer, operator):
    AuditEntry.objects.create(user=operator, action="dlq_retry", target="a")
    AuditEntry.objects.create(user=operator, action="dlq_discard", target="b")
    AuditEntry.objects.create(user=viewer, action="dlq_retry", target="c")
    client.force_login(viewer)
    html = client.get(
        reverse("dashboard:audit"), {"action": "dlq_retry", "user": "olga"}, **HX
    ).content.decode()
    assert "<html" not in html
    assert ">a<" in html and ">b<" not in html and ">c<" not in html


def test_it_records_actions_taken_from_the_dashboard(client, operator, webhook):
    client.force_login(operator)
    client.post(reverse("dashboard:breaker_force_open", args=[webhook.pk]))
    html = client.get(reverse("dashboard:audit")).content.decode()
    # Cells of the entry's row: the header also names the user, the filter also lists the action.
    assert "<td>olga</td>" in html and "<code>breaker_force_open</code>" in html
    assert f"webhook:{webhook.pk} people" in html and "reason=paused by operator" in html
