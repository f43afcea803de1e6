"""The Clay simulator over real HTTP: Clay's webhook rules, fault injection, callbacks, stats, command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from clayops.devtools.simulator import ClaySimulator, credits_for_domain, enrichment_for
from tests.fixtures_sim import callback_sink as _callback_sink  # noqa: F401
from tests.fixtures_sim import clay_sim as _clay_sim  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def http():
    with httpx.Client(timeout=5) as client:
        yield client


def row(lead_id, **fields):
    return {"email": f"lead{lead_id}@acme-corp.com", "clayops_lead_id": lead_id, **fields}


def post(http, sim, rows, table="t_people", **kwargs):
    return http.post(sim.webhook_url(table), json=rows, **kwargs)


def eventually(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_it_accepts_a_single_row(clay_sim, http):
    response = post(http, clay_sim, row(1))
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "accepted": 1}
    assert response.http_version == "HTTP/1.1"
    stats = clay_sim.stats()
    assert stats["rows_accepted"] == 1
    assert stats["rows_received_by_table"] == {"t_people": 1}
    assert stats["requests_by_status"] == {"200": 1}
    assert stats["credits_charged"] == 6
    assert clay_sim.received(1) == 1


def test_it_accepts_a_batch_of_up_to_ten_rows(clay_sim, http):
    response = post(http, clay_sim, [row(i) for i in range(10)])
    assert response.json() == {"status": "ok", "accepted": 10}
    too_many = post(http, clay_sim, [row(i) for i in range(10, 21)])
    assert too_many.status_code == 422
    assert clay_sim.stats()["rows_accepted"] == 10


def test_it_keeps_and_counts_rows_without_a_lead_id(clay_sim, http):
    assert post(http, clay_sim, [{"email": "x@y.com"}, row(2)]).status_code == 200
    stats = clay_sim.stats()
    assert stats["rows_accepted"] == 2
    assert stats["rows_without_lead_id"] == 1
    assert stats["received_by_lead"]["leads"] == 1


def test_it_requires_the_table_token(clay_sim, http):
    clay_sim.configure_table("t_people", token="tok-123")
    assert post(http, clay_sim, row(1)).status_code == 401
    assert post(http, clay_sim, row(1), headers={"x-clay-webhook-auth": "nope"}).status_code == 401
    assert post(http, clay_sim, row(1), headers={"x-clay-webhook-auth": "tok-123"}).status_code == 200
    assert clay_sim.stats()["rows_accepted"] == 1


def test_it_rejects_payloads_over_the_limit_with_413_and_keeps_the_connection(clay_sim, http):
    big = row(1, notes="x" * 100_001)
    assert post(http, clay_sim, big).status_code == 413
    assert post(http, clay_sim, row(2)).status_code == 200  # same keep-alive connection still usable
    clay_sim.set_faults(payload_limit=50)
    assert post(http, clay_sim, row(3, notes="y" * 60)).status_code == 413
    assert clay_sim.stats()["requests_by_status"] == {"413": 2, "200": 1}


def test_it_rejects_bad_json_and_wrong_content_types_with_422(clay_sim, http):
    url = clay_sim.webhook_url("t_people")
    assert http.post(url, content=b"{nope", headers={"content-type": "application/json"}).status_code == 422
    assert http.post(url, content=b'{"a":1}', headers={"content-type": "text/plain"}).status_code == 422
    assert http.post(url, content=b"[1, 2]", headers={"content-type": "application/json"}).status_code == 422
    ok = http.post(url, content=b'{"a":1}', headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_it_answers_404_for_unknown_or_deleted_tables(clay_sim, http):
    assert post(http, clay_sim, row(1), table="t_new").status_code == 200  # auto-created
    clay_sim.delete_table("t_new")
    assert post(http, clay_sim, row(2), table="t_new").status_code == 404
    clay_sim.set_faults(auto_create=False)
    response = post(http, clay_sim, row(3), table="t_unknown")
    assert response.status_code == 404
    assert "t_unknown" in response.json()["error"]


def test_it_answers_404_once_the_row_cap_is_reached(clay_sim, http):
    clay_sim.configure_table("t_people", row_cap=3)
    assert post(http, clay_sim, [row(1), row(2)]).status_code == 200
    assert post(http, clay_sim, [row(3), row(4)]).status_code == 404  # would pass the cap: nothing taken
    assert post(http, clay_sim, row(3)).status_code == 200
    full = post(http, clay_sim, row(5))
    assert full.status_code == 404
    assert "submission limit" in full.json()["error"]
    assert clay_sim.stats()["rows_received_by_table"] == {"t_people": 3}


def test_it_rate_limits_the_workspace_with_429_and_retry_after(clay_sim, http):
    clay_sim.set_faults(rate_limit=0.5, burst=5)  # 12 quick requests: no token comes back meanwhile
    answers = [post(http, clay_sim, row(i), table=f"t_{i % 2}") for i in range(12)]  # tables share it
    assert [a.status_code for a in answers[:5]] == [200] * 5
    limited = [a for a in answers if a.status_code == 429]
    assert len(limited) == 7
    assert all(int(a.headers["retry-after"]) >= 1 for a in limited)
    stats = clay_sim.stats()
    assert stats["rate_limited"] == 7
    assert stats["requests_by_status"]["429"] == 7
    assert stats["rows_accepted"] == 5
    assert stats["max_rows_per_second"] <= 5
    assert post(http, clay_sim, [row(i) for i in range(20, 26)]).status_code == 429  # 6 rows > burst


def test_a_fixed_window_refuses_rows_past_its_size_within_one_wall_clock_second(clay_sim, http):
    clay_sim.set_faults(window_limit=4)
    while time.time() % 1 > 0.5:  # start early in a second, so the six posts share it
        time.sleep(0.05)
    answers = [post(http, clay_sim, row(i)).status_code for i in range(6)]
    assert answers == [200] * 4 + [429] * 2
    assert post(http, clay_sim, [row(10), row(11)]).status_code in (200, 429)  # maybe a new second
    time.sleep(1.0)
    assert post(http, clay_sim, [row(20), row(21), row(22), row(23)]).status_code == 200  # a new window
    stats = clay_sim.stats()
    assert stats["rate_limited"] >= 2 and stats["max_rows_per_second"] <= 4


def test_it_never_lets_more_than_burst_plus_rate_through_in_a_second(clay_sim):
    clay_sim.set_faults(rate_limit=10, burst=10)
    started = time.monotonic()
    stop = started + 1.5

    def hammer(worker):
        with httpx.Client(timeout=5) as client:
            i = 0
            while time.monotonic() < stop:
                client.post(clay_sim.webhook_url("t_people"), json=row(worker * 100_000 + i))
                i += 1

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    stats = clay_sim.stats()
    assert stats["rate_limited"] > 0
    assert 10 <= stats["rows_accepted"] <= 10 + 10 * elapsed
    assert max(stats["rows_per_second"].values()) == stats["max_rows_per_second"] <= 10 + 10


def test_it_injects_errors_at_the_seeded_rate_reproducibly(clay_sim, http):
    def run():
        clay_sim.reset()
        clay_sim.set_faults(seed=7, error_rate=0.5)
        return [post(http, clay_sim, row(i)).status_code for i in range(40)]

    first, second = run(), run()
    assert first == second
    errors = [code for code in first if code != 200]
    assert 8 <= len(errors) <= 32
    assert set(errors) <= {500, 502, 503}
    assert clay_sim.stats()["injected_errors"] == len(errors)


def test_it_fails_the_next_n_requests_with_the_given_status(clay_sim, http):
    response = http.post(clay_sim.url + "/_sim/faults", json={"fail_next": 2, "fail_next_status": 502})
    assert response.json()["fail_next"] == 2
    codes = [post(http, clay_sim, row(i)).status_code for i in range(3)]
    assert codes == [502, 502, 200]
    clay_sim.set_faults(fail_next=1, fail_next_status=429, retry_after=7)
    limited = post(http, clay_sim, row(9))
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "7")


def test_it_hangs_past_the_client_timeout_without_blocking_others(clay_sim, http):
    clay_sim.set_faults(fail_next=1, fail_next_status="hang", hang_seconds=5)
    errors = []

    def hanging():
        try:
            httpx.post(clay_sim.webhook_url("t_people"), json=row(1), timeout=httpx.Timeout(5, read=0.5))
        except httpx.ReadTimeout as exc:
            errors.append(exc)

    thread = threading.Thread(target=hanging)
    thread.start()
    eventually(lambda: clay_sim.stats()["hangs"] == 1)
    started = time.monotonic()
    assert post(http, clay_sim, row(2)).status_code == 200  # served while the other one hangs
    assert time.monotonic() - started < 2  # not after the 5 s hang
    thread.join()
    assert len(errors) == 1
    assert clay_sim.received(1) == 0  # a plain hang records nothing


def test_it_records_the_row_when_it_accepts_and_then_hangs(clay_sim, http):
    clay_sim.set_faults(fail_next=1, fail_next_status="accept_and_hang", hang_seconds=5)
    with pytest.raises(httpx.ReadTimeout):
        post(http, clay_sim, row(1), timeout=httpx.Timeout(5, read=0.3))
    stats = clay_sim.stats()
    assert stats["rows_accepted"] == stats["rows_uncertain"] == 1
    assert clay_sim.received(1) == 1
    # Resending after the timeout charges twice; it is not counted as a double charge (no 2xx was seen).
    assert post(http, clay_sim, row(1)).status_code == 200
    assert post(http, clay_sim, row(1)).status_code == 200  # this one comes after a 2xx
    by_lead = clay_sim.stats()["received_by_lead"]
    assert by_lead["duplicate_rows"] == 2
    assert by_lead["double_charges"] == 1


def test_it_detects_duplicate_leads(clay_sim, http):
    post(http, clay_sim, [row(1), row(2)])
    post(http, clay_sim, row(1))
    post(http, clay_sim, {"clayops_lead_id": "2"})  # the same id as a string
    post(http, clay_sim, row(3))
    by_lead = clay_sim.stats()["received_by_lead"]
    assert by_lead == {
        "leads": 3,
        "duplicate_leads": 2,
        "duplicate_lead_ids": ["1", "2"],
        "duplicate_rows": 2,
        "double_charges": 2,
    }


def test_it_resets_connections_without_an_answer(clay_sim, http):
    clay_sim.set_faults(reset_rate=1.0)
    for i in range(3):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
            post(http, clay_sim, row(i))
    clay_sim.set_faults(reset_rate=0)
    assert post(http, clay_sim, row(9)).status_code == 200
    stats = clay_sim.stats()
    assert stats["resets"] == 3
    assert stats["requests_by_status"] == {"reset": 3, "200": 1}
    assert stats["rows_accepted"] == 1


def test_it_applies_an_outage_until_it_is_cleared(clay_sim, http):
    http.post(clay_sim.url + "/_sim/faults", json={"outage": "503"}).raise_for_status()
    assert post(http, clay_sim, row(1)).status_code == 503
    assert clay_sim.stats()["outage_active"] == "503"
    clay_sim.set_faults(outage="reset")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)):
        post(http, clay_sim, row(2))
    http.post(clay_sim.url + "/_sim/faults", json={"outage": None}).raise_for_status()
    assert post(http, clay_sim, row(3)).status_code == 200
    assert clay_sim.stats()["requests_during_outage"] == 2


def test_it_runs_a_scripted_outage(clay_sim, http):
    clay_sim.set_faults(outage_script=[{"start_after_s": 0.5, "duration_s": 0.8, "mode": "503"}])
    set_at = time.monotonic()
    assert post(http, clay_sim, row(1)).status_code == 200
    time.sleep(max(0, set_at + 0.9 - time.monotonic()))
    assert post(http, clay_sim, row(2)).status_code == 503
    time.sleep(max(0, set_at + 1.4 - time.monotonic()))
    assert post(http, clay_sim, row(3)).status_code == 200
    stats = clay_sim.stats()
    assert stats["requests_during_outage"] == 1
    assert stats["outage_active"] is None


def test_it_charges_credits_and_answers_402_when_the_pool_runs_out(clay_sim, http):
    clay_sim.set_faults(credit_pool=10)
    assert post(http, clay_sim, row(1)).status_code == 200
    assert post(http, clay_sim, row(2)).status_code == 402
    stats = clay_sim.stats()
    assert (stats["credits_charged"], stats["credit_pool_remaining"], stats["payment_required"]) == (6, 4, 1)
    assert stats["rows_accepted"] == 1


def test_it_posts_callbacks_with_the_secret_enrichment_and_credits(clay_sim, callback_sink, http):
    # What `manage.py up` does for the default table.
    response = http.post(
        clay_sim.url + "/_sim/tables/t_default",
        json={
            "callback_url": callback_sink.url + "/clay/callback/1/",
            "callback_headers": {"X-Clayops-Secret": "s3cret"},
            "callback_delay_s": 0.2,
        },
    )
    assert response.status_code == 200
    sent_at = time.monotonic()
    lead = {"email": "ann@acme-corp.com", "first_name": "Ann", "clayops_lead_id": 42}
    assert post(http, clay_sim, lead, table="t_default", headers={"x-clay-webhook-auth": "any"}).is_success
    (callback,) = callback_sink.wait_for(1)
    assert time.monotonic() - sent_at >= 0.2
    assert callback.path == "/clay/callback/1/"
    assert callback.headers["x-clayops-secret"] == "s3cret"
    assert callback.headers["content-type"] == "application/json"
    assert callback.body == {
        **lead,
        **enrichment_for("acme-corp.com"),
        "enrichment_status": "ok",
        "credits_used": 6,
    }
    assert callback.body["company_name"] == "Acme Corp"
    assert callback.body["linkedin_url"] == "https://www.linkedin.com/company/acme-corp"
    eventually(lambda: clay_sim.stats()["callbacks_sent"] == 1)
    assert clay_sim.stats()["callbacks_pending"] == 0


def test_it_charges_credits_from_the_domain_when_asked(clay_sim, callback_sink, http):
    clay_sim.configure_table("t_people", callback_url=callback_sink.url, credits_from_domain=True)
    post(http, clay_sim, [row(1, domain="https://www.globex.io/about"), row(2)])
    callbacks = sorted(callback_sink.wait_for(2), key=lambda c: c.body["clayops_lead_id"])
    expected = [credits_for_domain("globex.io"), credits_for_domain("acme-corp.com")]
    assert [c.body["credits_used"] for c in callbacks] == expected
    assert callbacks[0].body["company_domain"] == "globex.io"
    assert clay_sim.stats()["credits_charged"] == sum(expected)


def test_it_retries_a_failed_callback(callback_sink, http):
    with ClaySimulator(callback_delay_s=0, callback_backoff_s=0.05) as sim:
        callback_sink.fail_first = 2
        sim.configure_table("t_people", callback_url=callback_sink.url)
        post(http, sim, row(1))
        callbacks = callback_sink.wait_for(3)
        assert {c.body["clayops_lead_id"] for c in callbacks} == {1}
        eventually(lambda: sim.stats()["callbacks_sent"] == 1)
        stats = sim.stats()
        assert (stats["callbacks_retried"], stats["callbacks_failed"]) == (2, 0)
        # A 4xx from clayops is final: no retry.
        callback_sink.status = 404
        post(http, sim, row(2))
        eventually(lambda: sim.stats()["callbacks_failed"] == 1)
        assert len(callback_sink.received) == 4


def test_it_reports_failed_enrichments_and_duplicate_callbacks(clay_sim, callback_sink, http):
    clay_sim.configure_table("t_people", callback_url=callback_sink.url)
    clay_sim.set_faults(callback_fail_rate=1.0, duplicate_callback_rate=1.0)
    post(http, clay_sim, row(1))
    first, second = callback_sink.wait_for(2)
    assert first.body == second.body
    assert first.body["enrichment_status"] == "failed"
    assert first.body["credits_used"] == 0
    eventually(lambda: clay_sim.stats()["callbacks_sent"] == 2)
    stats = clay_sim.stats()
    assert (stats["callbacks_duplicated"], stats["credits_charged"]) == (1, 0)


def test_it_counts_concurrent_requests_under_latency(clay_sim):
    clay_sim.set_faults(latency_ms=500)
    clients = [httpx.Client(timeout=5) for _ in range(8)]
    ready = threading.Barrier(len(clients))

    def send(i):
        ready.wait()
        clients[i].post(clay_sim.webhook_url("t_people"), json=row(i))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clients))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert time.monotonic() - started < 2.0  # 8 × 500 ms in parallel, not in a row
    stats = clay_sim.stats()
    assert stats["concurrent_requests_max"] == 8
    assert stats["rows_accepted"] == 8
    eventually(lambda: clay_sim.stats()["concurrent_requests"] == 0)  # counted down after the answer


def test_it_exposes_and_validates_the_control_api(clay_sim, http):
    assert http.get(clay_sim.url + "/_sim/health").json() == {"ok": True}
    bad = http.post(clay_sim.url + "/_sim/faults", json={"error_rate": 2})
    assert bad.status_code == 400
    assert http.post(clay_sim.url + "/_sim/faults", json={"no_such": 1}).status_code == 400
    table = http.post(clay_sim.url + "/_sim/tables/t_x", json={"token": "t", "row_cap": 5}).json()
    assert (table["token"], table["row_cap"]) == ("t", 5)
    assert http.get(clay_sim.url + "/_sim/tables/t_x").json()["token"] == "t"
    post(http, clay_sim, row(1))
    assert clay_sim.stats()["rows_accepted"] == 1
    assert http.post(clay_sim.url + "/_sim/reset").json() == {"ok": True}
    stats = clay_sim.stats()
    assert stats["rows_accepted"] == 0
    assert stats["requests_total"] == 0
    assert clay_sim.table("t_x")["token"] == "t"  # config kept
    http.post(clay_sim.url + "/_sim/reset", json={"config": True}).raise_for_status()
    assert clay_sim.table("t_x") is None


def test_it_ends_hanging_requests_when_stopped():
    sim = ClaySimulator(hang_rate=1.0, hang_seconds=30).start()
    thread = threading.Thread(
        target=lambda: pytest.raises(httpx.HTTPError, httpx.post, sim.webhook_url("t"), json={}, timeout=30)
    )
    thread.start()
    eventually(lambda: sim.stats()["hangs"] == 1)
    started = time.monotonic()
    sim.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2


def test_it_binds_to_loopback_only():
    with pytest.raises(ValueError):
        ClaySimulator("0.0.0.0")
    with pytest.raises(CommandError, match="loopback"):
        call_command("clay_simulator", host="10.0.0.1", port=0)


def test_it_serves_on_ipv6_loopback():
    try:
        sim = ClaySimulator("::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        assert sim.url.startswith("http://[::1]:")
        assert httpx.get(sim.url + "/_sim/health").json() == {"ok": True}
    finally:
        sim.stop()


@pytest.mark.slow  # the simulator as a manage.py process
def test_it_runs_as_a_management_command_until_sigterm(http):
    env = dict(os.environ, CLAYOPS_NO_VENV="1", PYTHONUNBUFFERED="1")
    env["DJANGO_SETTINGS_MODULE"] = "clayops.settings_test"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "clay_simulator", "--port", "0", "--latency-ms", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        url = match.group(0)
        assert http.get(url + "/_sim/health").json() == {"ok": True}
        http.post(
            url + "/_sim/tables/t_default", json={"callback_url": "http://127.0.0.1:9/cb"}
        ).raise_for_status()
        assert http.post(url + "/v3/sources/webhook/t_default", json=row(1)).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
