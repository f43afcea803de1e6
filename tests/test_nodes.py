"""Supervised processes on the dashboard (issue 13): each node's `up` publishes its children to Redis;
the overview shows every node's processes, their restarts and last exit codes."""

from __future__ import annotations

import pytest

from clayops import nodes
from clayops.devtools.supervisor import Supervisor
from clayops.ratelimit import redis_connection


@pytest.fixture(autouse=True)
def _clean():
    conn = redis_connection()
    for key in conn.scan_iter(match=nodes.KEY_PREFIX + "*"):
        conn.delete(key)
    yield
    for key in conn.scan_iter(match=nodes.KEY_PREFIX + "*"):
        conn.delete(key)


def status(*children):
    return {"at": 1.0, "children": [dict(c) for c in children]}


WORKER = {"name": "worker-1", "pid": 4242, "running": True, "restarts": 2, "last_exit": -9}
WEB = {"name": "web", "pid": 4243, "running": False, "restarts": 0, "last_exit": 1}


def test_a_published_node_is_read_back_with_its_children_and_expires():
    nodes.publish(status(WORKER, WEB))
    [node] = nodes.read_all()
    assert node.name == nodes.node_name() and node.restarts == 2 and not node.all_running
    assert [c.name for c in node.children] == ["worker-1", "web"]
    assert 0 < redis_connection().ttl(nodes.KEY_PREFIX + node.name) <= nodes.TTL_SECONDS


def test_garbage_in_redis_is_skipped():
    redis_connection().set(nodes.KEY_PREFIX + "bad", b"{not json")
    nodes.publish(status(WORKER))
    assert [n.name for n in nodes.read_all()] == [nodes.node_name()]


def test_the_supervisor_publishes_on_change_and_not_every_pass(monkeypatch):
    seen = []
    sup = Supervisor(env={}, publish=seen.append)
    sup._write_status()
    sup._write_status()  # nothing changed, within PUBLISH_EVERY: not again
    assert len(seen) == 1


def test_the_overview_shows_every_node_with_restarts_and_exit_codes(client, viewer, webhook):
    nodes.publish(status(WORKER, WEB))
    redis_connection().set(
        nodes.KEY_PREFIX + "other/abc",
        '{"node": "other/abc", "at": 1, "children": [{"name": "cron", "pid": 7, "running": true, '
        '"restarts": 0, "last_exit": null}]}',
    )
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert "Processes" in page and "node other/abc" in page and f"node {nodes.node_name()}" in page
    assert "2 restarts" in page and "code -9 (signal 9)" in page and "down, restarting" in page


def test_the_overview_poll_sees_a_restart_as_a_change(client, viewer, webhook):
    client.force_login(viewer)
    nodes.publish(status(WORKER))
    first = client.get("/").context["version"]
    nodes.publish(status({**WORKER, "restarts": 3}))
    assert client.get("/", {"v": first}, HTTP_HX_REQUEST="true").status_code == 200
