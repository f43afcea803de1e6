"""Issue 13: two whole clayops nodes share one PostgreSQL and one Redis, and ride through one node
SIGKILLed and restarted and PostgreSQL restarted, with nobody's help.

Each node is `manage.py up --no-simulator --workers 2` (gunicorn, 2 RQ workers, the first with RQ's
scheduler, RQ cron) in a directory of its own (CLAYOPS_VAR_DIR with its uploads and collected static
files, and HOME, where gunicorn puts its control socket). The nodes share only what a deployment
shares: SECRET_KEY, DATABASE_URL, REDIS_URL and CLAYOPS_PUBLIC_URL. The test starts every server
itself: a PostgreSQL cluster made with initdb and pg_ctl, a redis-server on a free port, and one Clay
simulator (in this process) that plays Clay for both nodes.

Clay calls back node B. Clay's HTTP API column has one URL (CLAYOPS_PUBLIC_URL; in production a load
balancer in front of the web processes). Pointing it at the node that is killed would test how long
Clay keeps retrying a callback, not clayops: a callback Clay gives up on leaves its lead `accepted`
until the callback deadline makes it overdue for an operator. So node A's workers send and its web
server serves, node B's workers send and its web server takes every callback, and PostgreSQL's
restart interrupts both.

The run: 5,000 leads from a generated CSV through the product's import path (create_import on node
A; whichever worker takes the job reads the file). Once Clay has accepted 1,000 rows, every process
of node A is SIGKILLed (`up`, gunicorn and its workers, the RQ workers and RQ's scheduler, cron) and
node A is started again in the same directory 3 s later. Once Clay has accepted 3,000, PostgreSQL is
restarted (`pg_ctl restart -m fast`: every connection of both nodes is dropped).

Scaled for CI. Clay's published limit is 10 rows/s per workspace, burst 20: 5,000 leads would take
8 1/2 minutes. Here the workspace has 50 rows/s, burst 100 (Clay's proportion), and the simulator
enforces the same bucket (429 above it). The nodes' clocks are shortened to match: maintenance tick
2 s, stuck-lead limit 15 s (not 120), reservation TTL 40 s (not 300), callback grace 150 s (not 900;
it must stay above the callbacks' lag, which reached over a minute when two nodes, PostgreSQL and
Clay share two cores: below that, leads whose worker died are resent although Clay took them). The
rate headroom is 10 tokens, 200 ms at 50/s (the default 1 token is 100 ms at 10/s): on two loaded
cores a request can reach Clay that much after its token was taken. 4 requests in flight per job
(not 16): 4 workers x 4 is still 16 times what the rate allows, and fewer threads leave the CPU to
the callbacks.

Pass: within the deadline every lead is final, here all enriched; Clay answered no lead 2xx twice;
the books match Clay's (every row it took booked on its own send at its price, nothing held, spent
within the daily limit and, once doubtful sends are released, equal to what Clay charged); the
workspace's rate held across both nodes: not one 429 (so Clay's per-second counts are every request),
and no k consecutive seconds above burst + rate x k, what the token bucket admits (a single second
after an idle spell may rightly pass the burst alone, up to burst + rate); both nodes' workers took
jobs, node A's before the kill and after its restart; a login made on node A is valid on node B
(the shared SECRET_KEY); and SIGTERM stops both nodes with nothing left over.

The upload is stored in the database (clayops.blobstore), so the worker of either node reads it:
the nodes share no files.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from rq import Worker

from clayops.contract import CALLBACK_HEADER
from clayops.devtools.simulator import ClaySimulator, credits_for_domain
from tests.multinode_support import (
    Db,
    Node,
    PostgresCluster,
    RedisServer,
    alive_in,
    postgres_bindir,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

LEADS = 5_000
RATE, BURST = 50, 100  # rows/s and burst of the workspace, and of the simulator's bucket
KILL_AT, PG_RESTART_AT = 1_000, 3_000  # rows Clay accepted when each fault strikes
DOWN_SECONDS = 3  # node A stays dead this long
ESTIMATE = 6  # the webhook's credits per row; the simulator charges 6 to 20, by the lead's domain
TABLE, TOKEN, DATABASE = "t_multinode", "multinode-token", "clayops"
SETTLE_DEADLINE = 420  # s from the import until every lead is final (about 100 on 2 cores)
NODE_CLOCKS = {  # read from the environment by every process of a node; see the module docstring
    "CLAYOPS_TICK_SECONDS": "2",
    "CLAYOPS_STUCK_SUBMITTING_SECONDS": "15",
    "CLAYOPS_RESERVATION_TTL_SECONDS": "40",
    "CLAYOPS_UNCERTAIN_GRACE_SECONDS": "150",  # longer than callbacks lag on a loaded machine
    "CLAYOPS_ORPHAN_SECONDS": "20",
    "CLAYOPS_IMPORT_STALE_SECONDS": "30",
    "CLAYOPS_BACKOFF_BASE_SECONDS": "0.5",
    "CLAYOPS_BACKOFF_CAP_SECONDS": "5",
    "CLAYOPS_RATE_HEADROOM": "10",
    "CLAYOPS_SEND_CONCURRENCY": "4",
}
# The destination policy must let webhooks reach the simulator (plain http on 127.0.0.1): `up` sets
# this for its own simulator only, and these nodes run with --no-simulator.
SIMULATOR_DESTINATION = {
    "CLAYOPS_DESTINATION_HOSTS": "127.0.0.1",
    "CLAYOPS_DESTINATION_PRIVATE_NETWORKS": "127.0.0.1/32",
    "CLAYOPS_DESTINATION_ALLOW_HTTP": "1",
}
FINAL = {"enriched", "delivered", "overdue", "dead", "discarded", "served_cache", "served_fallback"}


def skip_reason() -> str | None:
    if postgres_bindir() is None:
        return "PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser: initdb and pg_ctl cannot run as the postgres user"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` user to run initdb and pg_ctl"
    return None


# --- what the operator does, in a node's `manage.py shell` ------------------------------------------


def domain(i: int) -> str:
    return f"mn{i}-corp.com"


def write_csv(path: Path) -> int:
    """The leads to import; returns the credits the simulator will charge for all of them."""
    with path.open("w") as fh:
        fh.write("email,first_name,last_name,company,domain\n")
        for i in range(LEADS):
            fh.write(f"p{i}@{domain(i)},P{i},Lead,Corp {i},{domain(i)}\n")
    return sum(credits_for_domain(domain(i)) for i in range(LEADS))


def provision(node: Node, *, limit: int, url: str) -> dict:
    """The workspace with its rate limit, its daily budget and the webhook, in the shared database."""
    return node.shell(
        "import json\n"
        "from decimal import Decimal\n"
        "from clayops.models import CircuitBreaker, CreditBudget, Webhook, Workspace\n"
        f"budget = CreditBudget.objects.create(name='multinode', daily_limit=Decimal('{limit}'))\n"
        "workspace = Workspace.objects.create(\n"
        f"    name='multinode', budget=budget, rate_limit={RATE}, burst={BURST})\n"
        "hook = Webhook.objects.create(\n"
        f"    workspace=workspace, name='multinode', url={url!r}, token={TOKEN!r},\n"
        f"    credits_per_row=Decimal('{ESTIMATE}'))\n"
        "CircuitBreaker.objects.create(webhook=hook)\n"
        "print(json.dumps({'budget': budget.pk, 'secret': hook.callback_secret,\n"
        "                  'callback_path': hook.callback_path}))\n"
    )


def upload(node: Node, csv: Path) -> dict:
    """The operator's upload through the product's path: the file stored, its import job enqueued."""
    return node.shell(
        "import json\n"
        "from clayops.imports import create_import\n"
        f"with open({str(csv)!r}, 'rb') as fh:\n"
        f"    imp = create_import(file=fh, filename={csv.name!r})\n"
        "print(json.dumps({'id': imp.pk, 'file': imp.file.name}))\n"
    )


# What maintenance does once the grace period has passed (budget.release_doubtful), without waiting
# for it: on a node, with the clock moved past the grace period (as test_callback_faults does).
RELEASE_DOUBTFUL = (
    "import json\n"
    "from datetime import timedelta\n"
    "from django.conf import settings\n"
    "from django.utils import timezone\n"
    "from clayops import budget\n"
    "later = timezone.now() + timedelta(seconds=settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS + 1)\n"
    "print(json.dumps(budget.release_doubtful(now=later)))\n"
)


def log_in(node: Node, nodes: list[Node]) -> httpx.Cookies:
    """The operator's session cookie, from a login on `node`. The operator is shared through the
    database: exactly one node's `up` created it and keeps its password (the other leaves it alone,
    even when both started at the same moment)."""
    [password] = [
        (n.var / "operator_password").read_text().strip()
        for n in nodes
        if (n.var / "operator_password").exists()
    ]
    with httpx.Client(base_url=node.url, timeout=30) as client:
        client.get("/login/")
        answer = client.post(
            "/login/",
            data={
                "username": "operator",
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
            headers={"Referer": f"{node.url}/login/"},
        )
        assert answer.status_code == 302, answer.text[:500]
        return client.cookies


# --- reading the shared database (the test's own psycopg connection) --------------------------------

LEAD_STATES = "SELECT state, count(*) FROM clayops_lead GROUP BY state"
BOOKS = (
    "SELECT coalesce(sum(reserved), 0), coalesce(sum(spent), 0) FROM clayops_creditusage WHERE budget_id = %s"
)
SENDS = (
    "SELECT state, actual IS NOT NULL, count(*), coalesce(sum(charged), 0) "
    "FROM clayops_creditreservation GROUP BY 1, 2"
)
# Sends on the books that no callback confirmed, and whether their lead was sent again after them.
UNCONFIRMED = (
    "SELECT r.id, r.lead_id, r.doubtful, r.charged, EXISTS (SELECT 1 FROM clayops_creditreservation l "
    "WHERE l.lead_id = r.lead_id AND l.id > r.id) FROM clayops_creditreservation r "
    "WHERE r.state = 'settled' AND r.actual IS NULL"
)
DEAD_WITHOUT_DLQ_ENTRY = (
    "SELECT count(*) FROM clayops_lead l WHERE l.state = 'dead' "
    "AND NOT EXISTS (SELECT 1 FROM clayops_deadletter d WHERE d.lead_id = l.id)"
)


def diagnosis(db: Db, sim: ClaySimulator) -> str:
    """For a failure message: where the leads are and why, what holds the webhook back, what Clay saw."""
    try:
        lines = [
            "leads by state and reason: "
            + str(
                db.rows(
                    "SELECT state, defer_reason, left(last_error, 80), count(*) FROM clayops_lead "
                    "GROUP BY 1, 2, 3 ORDER BY 4 DESC"
                )
            ),
            "webhook (active, full, broken, paused until, rows sent): "
            + str(
                db.rows(
                    "SELECT is_active, is_full, broken_reason, paused_until, rows_sent FROM clayops_webhook"
                )
            ),
            f"breaker: {db.rows('SELECT state, consecutive_failures FROM clayops_circuitbreaker')}",
            f"workspace paused: {db.rows('SELECT paused_until, pause_reason FROM clayops_workspace')}",
        ]
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        lines = [f"database: {exc!r}"]
    stats = sim.stats()
    keys = ("rows_accepted", "requests_by_status", "credits_charged", "callbacks_pending", "callbacks_failed")
    lines.append(f"simulator: { {key: stats[key] for key in keys} }")
    return "\n".join(lines)


def histories(db: Db, lead_ids: list[int], limit: int = 6) -> str:
    """For a failure message: a few leads with their attempts and their sends (credit holds)."""
    t = "'HH24:MI:SS.MS'"
    lines = []
    for lead in lead_ids[:limit]:
        row = db.rows(
            f"SELECT state, attempt_count, to_char(submitted_at, {t}), to_char(enriched_at, {t}) "
            "FROM clayops_lead WHERE id = %s",
            (lead,),
        )
        attempts = db.rows(
            f"SELECT to_char(started_at, {t}), status_code, outcome, left(error, 60) FROM clayops_attempt "
            "WHERE lead_id = %s ORDER BY id",
            (lead,),
        )
        sends = db.rows(
            f"SELECT id, state, doubtful, charged, actual, to_char(created_at, {t}), to_char(closed_at, {t}) "
            "FROM clayops_creditreservation WHERE lead_id = %s ORDER BY id",
            (lead,),
        )
        lines.append(f"lead {lead} {row}: attempts {attempts}; sends {sends}")
    return "\n".join(lines)


def worst_window_excess(per_second: dict[int, int], *, rate: float, burst: int) -> float:
    """The largest (rows in k consecutive seconds) - (burst + rate x k) over every window of every
    length; a token bucket of that rate and burst keeps it at or below 0."""
    if not per_second:
        return float("-inf")
    counts = [per_second.get(s, 0) for s in range(min(per_second), max(per_second) + 1)]
    worst = float("-inf")
    for first in range(len(counts)):
        total = 0
        for last in range(first, len(counts)):
            total += counts[last]
            worst = max(worst, total - (burst + rate * (last - first + 1)))
    return worst


# --- the servers --------------------------------------------------------------------------------------


class Servers:
    """What the test starts: PostgreSQL, Redis, the simulator and the two nodes, and a story of the
    run (printed as it goes, and in failure messages)."""

    def __init__(self, tmp_path: Path) -> None:
        self.started = time.monotonic()
        self.story: list[str] = []
        self.cluster = PostgresCluster(postgres_bindir())  # type: ignore[arg-type]
        self.redis = RedisServer(tmp_path / "redis")
        self.db = Db(self.cluster, DATABASE)
        self.sim: ClaySimulator | None = None
        self.nodes: list[Node] = []

    def note(self, message: str) -> None:
        self.story.append(f"{time.monotonic() - self.started:6.1f} s  {message}")
        print(self.story[-1], flush=True)

    @property
    def why(self) -> str:
        return "\n".join(self.story)

    def start(self, tmp_path: Path) -> None:
        self.cluster.init()
        self.cluster.start()
        self.cluster.create_database(DATABASE)
        self.redis.start()
        # Clay's HTTP API column: 16 senders (the callbacks must keep up with 50 rows/s) that retry a
        # failed callback for about a minute (PostgreSQL's restart makes node B answer 500 a moment).
        self.sim = ClaySimulator(
            "127.0.0.1",
            0,
            seed=13,
            rate_limit=RATE,
            burst=BURST,
            latency_ms=20,
            callback_delay_s=0.2,
            callback_workers=16,
            callback_retries=8,
            callback_backoff_s=0.25,
        ).start()
        shared = {
            "DATABASE_URL": self.cluster.url(DATABASE),
            "REDIS_URL": self.redis.url,
            "SECRET_KEY": secrets.token_urlsafe(50),
            "CLAYOPS_REQUIRE_SECRET_KEY": "1",
            **NODE_CLOCKS,
            **SIMULATOR_DESTINATION,
        }
        self.nodes = [Node(name, tmp_path / f"node-{name}", shared) for name in ("a", "b")]
        for node in self.nodes:  # the one public URL Clay calls back: node B's
            node.env["CLAYOPS_PUBLIC_URL"] = self.nodes[1].url
        self.note(
            f"PostgreSQL :{self.cluster.port}, Redis :{self.redis.port}, simulator {self.sim.url}, "
            f"node a :{self.nodes[0].port}, node b :{self.nodes[1].port}"
        )

    def check_nodes_running(self) -> None:
        for node in self.nodes:
            assert node.running(), f"node {node.name} stopped\n{node.log_tail()}\n{self.why}"

    def stop(self) -> None:
        """Whatever happened: nothing the test started outlives it."""
        self.db.close()
        for node in self.nodes:
            node.kill_if_running()
        if self.sim is not None:
            self.sim.stop()
        self.redis.stop()
        self.cluster.cleanup()


@pytest.fixture
def servers(tmp_path):
    made = Servers(tmp_path)
    try:
        made.start(tmp_path)
        yield made
    finally:
        made.stop()


# --- the test -----------------------------------------------------------------------------------------


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_two_nodes_share_postgres_and_redis_through_a_node_kill_and_a_postgres_restart(servers):
    run, db, sim, cluster = servers, servers.db, servers.sim, servers.cluster
    assert sim is not None
    a, b = run.nodes

    # --- set up: the schema once, the workspace, Clay's table, both nodes, the upload ---------------
    a.manage("migrate", "--noinput")  # once, before the nodes start: two first migrations would race
    csv = a.dir / "multinode-leads.csv"
    limit = write_csv(csv) * 6 // 5  # finite: 20 % above what the 5,000 leads cost at Clay
    hook = provision(a, limit=limit, url=sim.webhook_url(TABLE))
    sim.configure_table(
        TABLE,
        token=TOKEN,
        callback_url=b.url + hook["callback_path"],
        callback_headers={CALLBACK_HEADER: hook["secret"]},
        credits_from_domain=True,
    )
    for node in run.nodes:  # both at once: up's own start-up (migrate, roles, operator) takes it
        node.start()
    for node in run.nodes:
        node.wait_up()
        node.sessions()  # (remembered for the last-resort cleanup)
        # The external Redis and the shared SECRET_KEY, not private ones in var/.
        assert "Redis: private" not in node.log() and not (node.var / "redis").exists(), node.log_tail()
        assert not (node.var / "secret_key").exists()
    run.note("nodes a and b up")

    imp = upload(a, csv)
    assert imp["file"] == f"imports/{csv.name}", imp
    uploaded = time.monotonic()

    def import_finished():
        rows = db.rows("SELECT state, valid_rows, error FROM clayops_leadimport WHERE id = %s", (imp["id"],))
        return rows[0] if rows and rows[0][0] in ("done", "failed") else None

    state, valid, error = wait_until(import_finished, 60, "the import finished")
    assert (state, valid) == ("done", LEADS), (state, valid, error)
    run.note(f"imported {valid} leads")

    def accepted(n: int):
        def check() -> bool:
            run.check_nodes_running()
            return sim.stats()["rows_accepted"] >= n

        return check

    # --- fault 1: node A SIGKILLed, all of it, and started again in its directory --------------------
    try:
        wait_until(accepted(KILL_AT), 120, f"{KILL_AT} rows accepted", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(db, sim)}\n{run.why}") from None
    workers_a_before, workers_b = a.worker_pids(), b.worker_pids()
    killed = a.kill()
    run.note(
        f"node a SIGKILLed ({killed} processes) at {sim.stats()['rows_accepted']} accepted; "
        f"leads {dict(db.rows(LEAD_STATES))}"
    )
    time.sleep(DOWN_SECONDS)
    a.start()
    a.wait_up()
    a.sessions()
    workers_a_after = a.worker_pids()
    run.note(f"node a up again at {sim.stats()['rows_accepted']} accepted")

    # --- fault 2: PostgreSQL restarted -------------------------------------------------------------
    wait_until(accepted(PG_RESTART_AT), 150, f"{PG_RESTART_AT} rows accepted", interval=0.1)
    before = time.monotonic()
    cluster.restart()
    run.note(
        f"PostgreSQL restarted ({time.monotonic() - before:.1f} s) at {sim.stats()['rows_accepted']} accepted"
    )

    # --- every lead final, every callback in, nothing held -------------------------------------------
    next_note = time.monotonic() + 10

    def settled() -> bool:
        nonlocal next_note
        run.check_nodes_running()
        stats = sim.stats()
        if time.monotonic() >= next_note:  # how far the callbacks lag behind
            next_note += 10
            run.note(f"accepted {stats['rows_accepted']}, callbacks pending {stats['callbacks_pending']}")
        try:
            states = dict(db.rows(LEAD_STATES))
            reserved, _ = db.rows(BOOKS, (hook["budget"],))[0]
        except Exception:  # noqa: BLE001 - the database is not answering (yet): not settled
            return False
        return set(states) <= FINAL and reserved == 0 and stats["callbacks_pending"] == 0

    try:
        wait_until(settled, SETTLE_DEADLINE - (time.monotonic() - uploaded), "every lead final", interval=1)
    except AssertionError as exc:
        run.note(f"{exc}\n{diagnosis(db, sim)}")
    states = dict(db.rows(LEAD_STATES))
    run.note(f"settled {time.monotonic() - uploaded:.0f} s after the upload: {states}")

    # Every lead final: here, with no fault at Clay, every one enriched.
    assert sum(states.values()) == LEADS and set(states) <= FINAL, f"leads not final: {states}\n{run.why}"
    assert db.rows(DEAD_WITHOUT_DLQ_ENTRY)[0][0] == 0, "a dead lead without its DLQ entry"
    assert states == {"enriched": LEADS}, f"not all enriched: {states}\n{diagnosis(db, sim)}\n{run.why}"

    # Clay received every lead, and none again after it answered 2xx.
    stats = sim.stats()
    with sim.lock:
        received = {int(lead): n for lead, n in sim.counters.lead_counts.items()}
        answered_2xx = {int(lead) for lead in sim.counters.ok_leads}
    assert set(received) == {pk for (pk,) in db.rows("SELECT id FROM clayops_lead")}
    twice = sorted(lead for lead in answered_2xx if received[lead] > 1)
    assert not twice and stats["received_by_lead"]["double_charges"] == 0, (
        f"sent again after a 2xx: {twice[:20]} ({len(twice)})\n{run.why}\n{histories(db, twice)}"
    )
    assert stats["callbacks_failed"] == 0 and stats["callbacks_dropped"] == 0, stats

    # The books (kept as tests/test_callback_faults.py keeps them): every row Clay took is booked on
    # its own send at Clay's price (the callback names the send), nothing is held, and the limit is
    # kept. Spent is what Clay charged plus only doubtful sends: a lead's send whose outcome died with
    # its worker (node A's kill, or a job PostgreSQL's restart broke) and that Clay never took, so
    # the lead was sent again after the grace period. Maintenance takes such a send off the books
    # once the grace period has passed since the lead was enriched; then spent is what Clay charged.
    charged = Decimal(str(stats["credits_charged"]))
    reserved, spent = db.rows(BOOKS, (hook["budget"],))[0]
    assert reserved == 0 and spent <= limit, (reserved, spent, limit)
    for day, day_reserved, day_spent in db.rows(
        "SELECT day, reserved, spent FROM clayops_creditusage WHERE budget_id = %s", (hook["budget"],)
    ):
        assert day_reserved + day_spent <= limit, (day, day_reserved, day_spent, limit)
    sends = {(state, confirmed): (n, total) for state, confirmed, n, total in db.rows(SENDS)}
    assert sends.get(("settled", True)) == (stats["rows_accepted"], charged), sends
    assert not {key for key in sends if key[0] == "held"}, sends
    unconfirmed = db.rows(UNCONFIRMED)
    for send, lead, doubtful, amount, resent in unconfirmed:
        assert doubtful and resent and amount == ESTIMATE and received[lead] == 1, (
            f"send {send} booked although Clay never took it\n{histories(db, [lead])}"
        )
    assert spent == charged + sum((row[3] for row in unconfirmed), Decimal(0)), (spent, charged, unconfirmed)
    assert (a.shell(RELEASE_DOUBTFUL) if unconfirmed else 0) == len(unconfirmed)
    assert db.rows(BOOKS, (hook["budget"],))[0] == (0, charged), "spent is not what Clay charged"
    run.note(f"books: spent {charged} = Clay's charges (limit {limit}), {len(unconfirmed)} doubtful sends")

    # The workspace's rate held across both nodes: Clay's bucket refused nothing (so its per-second
    # counts are every request), and no window of k seconds passed the bucket's burst + rate x k.
    per_second = {int(second): n for second, n in stats["rows_per_second"].items()}
    excess = worst_window_excess(per_second, rate=RATE, burst=BURST)
    seconds = max(per_second) - min(per_second) + 1
    run.note(
        f"rate: {stats['rows_accepted']} rows in {seconds} s ({stats['rows_accepted'] / seconds:.1f}/s), "
        f"busiest second {stats['max_rows_per_second']}, worst window {excess:+.0f} against the bound, "
        f"429s {stats['rate_limited']}"
    )
    assert stats["rate_limited"] == 0 and "429" not in stats["requests_by_status"], f"429s\n{run.why}"
    assert stats["max_rows_per_second"] <= BURST + RATE and excess <= 0, run.why

    # Both nodes worked: node A before the kill and after its restart, node B all along (RQ's own
    # per-worker counts, in the shared Redis; jobs failed by PostgreSQL's restart are counted apart).
    jobs = {
        w.pid: (w.successful_job_count, w.failed_job_count) for w in Worker.all(connection=run.redis.client())
    }

    def done(pids: set[int]) -> int:
        return sum(jobs.get(pid, (0, 0))[0] for pid in pids)

    run.note(
        f"jobs done: node a {done(workers_a_before)} before the kill and {done(workers_a_after)} after it, "
        f"node b {done(workers_b)}; failed {sum(failed for _, failed in jobs.values())}"
    )
    assert done(workers_a_before) and done(workers_a_after) and done(workers_b), run.why

    # One SECRET_KEY: a login made on node A holds on node B.
    cookies = log_in(a, run.nodes)
    page = httpx.get(f"{b.url}/", cookies=cookies, timeout=30)
    assert page.status_code == 200 and 'class="role">operator' in page.text, page.status_code

    # --- SIGTERM stops both nodes, and nothing of them is left --------------------------------------
    sessions = {node.name: node.terminate() for node in run.nodes}
    for node in run.nodes:
        code = node.wait_stopped(90)
        assert code == 0 and "clayops stopped." in node.log(), f"exit {code}\n{node.log_tail()}"
        wait_until(
            lambda s=sessions[node.name]: not alive_in(s), 15, f"every process of node {node.name} gone"
        )
    run.note(f"both nodes stopped; the test took {time.monotonic() - run.started:.0f} s")
