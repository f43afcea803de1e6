"""The dashboard's totals are counted in the background (clayops.counts), never by a page view once a
count exists: leads per webhook and state, the waiting leads behind the deferral banners, and the
DLQ's entries per state, error class and webhook."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from clayops import counts, selectors
from clayops.models import DeadLetter, Lead
from tests.factories import make_dead_letter, make_leads

S = Lead.State


def counting_queries(queries) -> list[str]:
    """The queries that count rows of the big tables (GROUP BY / COUNT over leads or dead letters)."""
    big = ('"clayops_lead"', '"clayops_deadletter"')
    return [
        q["sql"]
        for q in queries
        if any(table in q["sql"] for table in big) and ("GROUP BY" in q["sql"] or "COUNT(" in q["sql"])
    ]


def test_the_first_read_counts_and_stores_then_reads_cost_no_query(webhook, django_assert_num_queries):
    make_leads(3, webhook=webhook, state=S.QUEUED)
    make_leads(2, webhook=webhook, state=S.DEFERRED)

    first = counts.snapshot()

    assert first["depths"][webhook.pk] == {S.QUEUED: 3, S.DEFERRED: 2}
    with django_assert_num_queries(0):
        again = counts.snapshot()
    assert again["depths"] == first["depths"]
    assert [row[:2] + row[4:5] for row in again["waiting"]] == [(webhook.pk, S.DEFERRED, 2)]


def test_it_recounts_only_when_due(webhook, settings):
    settings.CLAYOPS_COUNTS_SECONDS = 3
    counts.refresh_due()
    make_leads(4, webhook=webhook, state=S.QUEUED)

    assert counts.refresh_due() is False  # counted a moment ago
    assert counts.snapshot()["depths"].get(webhook.pk, {}).get(S.QUEUED, 0) == 0

    snap = cache.get(counts.SNAPSHOT_KEY)
    snap["at"] -= timedelta(seconds=4)
    cache.set(counts.SNAPSHOT_KEY, snap, None)
    assert counts.refresh_due() is True
    assert counts.snapshot()["depths"][webhook.pk][S.QUEUED] == 4


def test_a_slow_count_stretches_its_interval(settings):
    settings.CLAYOPS_COUNTS_SECONDS = 3
    assert counts.interval({"took": 0.01}) == 3
    assert counts.interval({"took": 2.5}) == 25  # a tenth of one connection's time, at most
    assert counts.interval(None) == 3


def test_one_process_counts_at_a_time(webhook):
    cache.add(counts.LOCK_KEY, 1, 60)  # another worker is counting
    assert counts.refresh_due() is False
    assert cache.get(counts.SNAPSHOT_KEY) is None
    cache.delete(counts.LOCK_KEY)
    assert counts.refresh_due() is True


def test_the_overview_and_dlq_pages_do_not_count_once_a_count_exists(client, operator, webhook):
    make_leads(5, webhook=webhook, state=S.DEFERRED)
    for i in range(3):
        make_dead_letter(i, webhook=webhook)
    counts.refresh_due()
    client.force_login(operator)

    for url in (reverse("dashboard:overview"), reverse("dashboard:dlq")):
        with CaptureQueriesContext(connection) as ctx:
            page = client.get(url)
        assert page.status_code == 200
        assert counting_queries(ctx.captured_queries) == [], url

    page = client.get(reverse("dashboard:dlq")).content.decode()
    assert "server_error" in page or "3" in page
    overview = client.get(reverse("dashboard:overview")).content.decode()
    assert 'data-testid="counted-at"' in overview


def test_the_dlq_state_counts_and_groups_come_from_the_count(webhook):
    for i in range(3):
        make_dead_letter(i, webhook=webhook, error_class="server_error")
    make_dead_letter(3, webhook=webhook, error_class="timeout", state=DeadLetter.State.EXHAUSTED)
    counts.refresh_due()

    assert dict(selectors.dlq_state_counts()) == {"pending": 3, "exhausted": 1, "retrying": 0}
    assert selectors.dlq_groups(filters={}) == [{"error_class": "server_error", "count": 3}]
    groups = selectors.dlq_groups(filters={"state": selectors.DLQ_STATE_ANY})
    assert groups == [{"error_class": "server_error", "count": 3}, {"error_class": "timeout", "count": 1}]
    assert selectors.dlq_groups(filters={"webhook": webhook.pk + 1000}) == []


def test_an_operators_dlq_action_shows_its_effect_at_once(client, operator, webhook):
    entries = [make_dead_letter(i, webhook=webhook) for i in range(3)]
    counts.refresh_due()
    client.force_login(operator)

    r = client.post(reverse("dashboard:dlq_discard"), {"ids": [entries[0].pk]}, HTTP_HX_REQUEST="true")

    assert r.status_code == 200
    assert dict(selectors.dlq_state_counts())["pending"] == 2


@pytest.mark.django_db(transaction=True)  # the thread has its own connection: it sees committed rows
def test_the_workers_thread_counts_until_stopped(webhook, settings, monkeypatch):
    monkeypatch.setattr(counts, "LOOP_SECONDS", 0.05)
    settings.CLAYOPS_COUNTS_SECONDS = 0.1
    make_leads(2, webhook=webhook, state=S.QUEUED)
    stop = threading.Event()
    thread = threading.Thread(target=counts.run_refresher, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while cache.get(counts.SNAPSHOT_KEY) is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert cache.get(counts.SNAPSHOT_KEY)["depths"][webhook.pk] == {S.QUEUED: 2}


def test_without_redis_a_page_counts_itself(webhook, monkeypatch):
    monkeypatch.setattr(counts.cache, "get", lambda *a, **k: None)
    monkeypatch.setattr(counts.cache, "add", lambda *a, **k: False)
    make_leads(2, webhook=webhook, state=S.QUEUED)
    assert counts.snapshot()["depths"][webhook.pk] == {S.QUEUED: 2}
