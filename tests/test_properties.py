"""Issue 10, as properties: no input makes clayops answer 500, or change its books when it must not.

Hypothesis generates what the outside world may send:

* to every URL pattern the resolver knows (walked as tests/test_url_access.py walks them, so a new
  URL is covered without editing this file): path converters filled with generated values (ids of
  rows that exist, zero, negative and huge numbers, unicode digits such as '²', text); a GET with a
  generated query string; a POST with generated form data (the keys the views read with values of
  the kind they expect or any other, `ids` lists, unknown keys, sometimes a file, multipart or
  urlencoded); with or without htmx's headers; as an operator, a viewer, a user with no role and
  anonymous;
* to Clay's callback: rows shaped like Clay's (lead and send ids, credits_used: huge, negative,
  fractional, textual, NaN, wrong types; batches up to past the 100-row limit), any JSON document
  (hypothesis' recursive strategy), near-JSON text and raw bytes; with the webhook's secret,
  another webhook's, a wrong one or none; under generated Content-Type and Content-Length headers.

Every request is then checked:

1. its status is below 500 (a view's exception is re-raised by the test client: the test fails
   with its traceback);
2. a request that must change nothing leaves the books exactly as they were: every GET, every POST
   but an operator's, every request answered 4xx (refused callbacks included). The books: credit
   usage rows, reservations, leads (state, enrichment, credits), DLQ entries, breakers and their
   events, webhook and workspace pauses, budgets, imports, the domain cache, RQ's queues;
3. a request that may change them (an operator's POST answered 2xx/3xx, a callback answered 2xx)
   leaves them balanced: for each usage row, reserved = what its held reservations hold and
   spent = what its settled ones charged, nothing negative, reserved + spent within the daily
   limit (the world's limit is above all that Clay's callbacks could report for its few sends, so
   passing it would be clayops' doing);
4. a callback without its webhook's secret is refused (401, or 404 for an unknown webhook).

Each example runs in a savepoint rolled back afterwards, with the cache cleared, so every example
starts from the same world (built once per test by the `world` fixture). Inputs that answered 500
once are explicit examples (`@example`), tried on every run whatever hypothesis generates.
Hypothesis keeps no example database (`database=None`): a run replays no failure of an earlier one
(the explicit examples keep the known ones) and writes none to disk.
CLAYOPS_PROPERTY_SCALE=10 runs ten times as many examples, for a longer hunt.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import django_rq
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clayops import budget as budget_service
from clayops import provisioning
from clayops.contract import CALLBACK_HEADER, LEAD_ID_FIELD, SEND_ID_FIELD
from clayops.models import (
    CircuitBreaker,
    CircuitEvent,
    CreditBudget,
    CreditReservation,
    CreditUsage,
    DeadLetter,
    EnrichmentCache,
    ImportRowError,
    Lead,
    LeadImport,
    Webhook,
    Workspace,
)
from tests.factories import (
    make_budget,
    make_dead_letter,
    make_lead,
    make_lead_import,
    make_user,
    make_webhook,
    make_workspace,
)
from tests.test_url_access import STAFF_PREFIXES

pytestmark = pytest.mark.properties

S = Lead.State
SCALE = float(os.environ.get("CLAYOPS_PROPERTY_SCALE", "1"))


def examples(n: int) -> settings:
    return settings(
        max_examples=max(1, round(n * SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# --- Every URL pattern --------------------------------------------------------------------------


def url_routes(resolver=None, prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str]]:
    """(name, full route) of every URL pattern, named and skipped as tests/test_url_access.py does."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern).lstrip("^").removesuffix("$").removesuffix(r"\Z")
        if isinstance(entry, URLResolver):
            if route.startswith(STAFF_PREFIXES):
                continue
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from url_routes(entry, route, ns)
        elif isinstance(entry, URLPattern):
            yield (f"{namespace}{entry.name}" if entry.name else route), route


ROUTES = dict(url_routes())
# A path converter (`<id:lead_id>`) or a regex group (`(?P<lead_id>[0-9]+)`), by parameter name.
PARAMETER = re.compile(r"<(?:\w+:)?(?P<route>\w+)>|\(\?P<(?P<regex>\w+)>[^)]*\)")
PATH_PARAMETERS = sorted(
    {m["route"] or m["regex"] for route in ROUTES.values() for m in PARAMETER.finditer(route)}
)
# Which world rows a parameter names; a parameter not listed takes ids of any kind.
PARAMETER_KINDS = {"webhook_id": "webhook", "lead_id": "lead", "import_id": "import", "entry_id": "entry"}


# --- The world every example starts from ---------------------------------------------------------

ROLE_NAMES = ("operator", "viewer", "no role", "anonymous")
SENT_LEADS = ("accepted", "uncertain", "overdue", "enriched", "resent", "theirs", "reaped")
LEAD_NAMES = (*SENT_LEADS, "queued", "deferred", "retry", "dead_pending", "dead_exhausted", "dead_permanent")
ENTRY_NAMES = ("pending", "exhausted", "permanent")
IMPORT_NAMES = ("done", "running")
WORLD_LIMIT = Decimal("10000")  # > CLAYOPS_MAX_CREDITS_PER_ROW (1000) x the world's 7 sends


@dataclasses.dataclass(frozen=True)
class Ref:
    """A row of the world by kind and name, replaced by its id when a request is built (ids differ
    between runs and databases). `text`: the id as a string, as a form or a JSON string carries it."""

    kind: str
    name: str
    text: bool = False


def as_text(ref: Ref) -> Ref:
    return dataclasses.replace(ref, text=True)


@dataclasses.dataclass(frozen=True)
class Existing:
    """In a path: the n-th (modulo) existing row of the kind the parameter names."""

    n: int


RIGHT_SECRET, OTHER_SECRET, NO_SECRET = "<the webhook's secret>", "<another webhook's secret>", None


class World:
    """The ids of the world's rows by kind and name, a session per role, each webhook's secret."""

    def __init__(self, *, ids: dict[str, dict[str, int]], sessions: dict, secrets: dict[int, str]):
        self.ids, self.sessions, self.secrets = ids, sessions, secrets

    def __repr__(self) -> str:  # short, in hypothesis' report of a failing example
        return "World(...)"

    def resolve(self, value: Any) -> Any:
        """`value` with every Ref replaced by its id, inside lists and dicts too."""
        if isinstance(value, Ref):
            pk = self.ids[value.kind][value.name]
            return str(pk) if value.text else pk
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        return value

    def url(self, route: str, path: dict[str, Any]) -> str:
        """The route with each parameter filled with its value in `path`, percent-encoded."""

        def fill(match: re.Match) -> str:
            parameter = match["route"] or match["regex"]
            value = path[parameter]
            if isinstance(value, Existing):
                kind = PARAMETER_KINDS.get(parameter)
                pool = sorted(pk for k, rows in self.ids.items() if kind in (None, k) for pk in rows.values())
                value = pool[value.n % len(pool)]
            return quote(str(self.resolve(value)), safe="")

        return "/" + PARAMETER.sub(fill, route)

    def client(self, role: str) -> Client:
        """A client with the session the fixture made for `role`. It re-raises a view's exception."""
        client = Client()
        if self.sessions[role]:
            client.cookies[django_settings.SESSION_COOKIE_NAME] = self.sessions[role]
        return client


@pytest.fixture
def world(db) -> World:
    """Two webhooks of one workspace (the second's breaker open), leads in every state a request may
    act on with their sends booked through the budget service (settled, held, reaped, charged at
    Clay's figure), DLQ entries, imports (one with an invalid row), a cached domain, a session per
    role."""
    now = timezone.now()
    budget = make_budget(name="props", daily_limit=WORLD_LIMIT)
    workspace = make_workspace(name="props", budget=budget)
    people = make_webhook(workspace=workspace, name="people")
    other = make_webhook(
        workspace=workspace, name="other", priority=200, breaker={"state": "open", "opened_at": now}
    )
    leads = {
        "accepted": make_lead(0, webhook=people, state=S.ACCEPTED),
        "uncertain": make_lead(1, webhook=people, state=S.UNCERTAIN),
        "overdue": make_lead(2, webhook=people, state=S.OVERDUE),
        "enriched": make_lead(3, webhook=people, state=S.ENRICHED),
        "resent": make_lead(4, webhook=people, state=S.QUEUED),  # sent once, queued again
        "queued": make_lead(5, webhook=people, state=S.QUEUED),  # never sent
        "deferred": make_lead(6, webhook=people, state=S.DEFERRED, defer_reason="budget"),
        "retry": make_lead(7, webhook=people, state=S.RETRY_WAIT, next_attempt_at=now + timedelta(hours=1)),
        "theirs": make_lead(8, webhook=other, state=S.ACCEPTED),
        "reaped": make_lead(9, webhook=people, state=S.ACCEPTED),  # its hold was reaped while out
    }
    holds = budget_service.reserve_many(
        budget=budget, amount=Decimal("6"), lead_ids=[leads[name].pk for name in SENT_LEADS]
    )
    sends = {name: holds[leads[name].pk] for name in SENT_LEADS}
    budget_service.settle_many([sends[name] for name in ("accepted", "overdue", "enriched", "theirs")])
    budget_service.release_many([sends["reaped"]])
    budget_service.record_actual(reservation_id=sends["enriched"], actual=Decimal("7.5"))
    Lead.objects.filter(pk=leads["enriched"].pk).update(
        enriched={"company_name": "Acme 3"}, enriched_at=now, credits_actual=Decimal("7.5")
    )
    EnrichmentCache.objects.create(
        domain="acme0.com", data={"company_name": "Cached"}, expires_at=now + timedelta(days=1)
    )
    entries = {
        "pending": make_dead_letter(0, webhook=people),
        "exhausted": make_dead_letter(1, webhook=people, state="exhausted", error_class="timeout"),
        "permanent": make_dead_letter(2, webhook=other, error_class="client_error", max_retries=0),
    }
    leads.update({f"dead_{name}": entry.lead for name, entry in entries.items()})
    imports = {
        "done": make_lead_import(webhook=people),
        "running": make_lead_import(webhook=people, state=LeadImport.State.RUNNING),
    }
    ImportRowError.objects.create(
        lead_import=imports["done"], line=3, error="no email", raw='=HYPERLINK("x"),+1'
    )
    sessions: dict[str, str | None] = {"anonymous": None}
    for role, user in {
        "operator": make_user("otto", role=provisioning.OPERATORS),
        "viewer": make_user("vera", role=provisioning.VIEWERS),
        "no role": make_user("nora"),
    }.items():
        client = Client()
        client.force_login(user)
        sessions[role] = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    assert (set(leads), set(entries), set(imports)) == (set(LEAD_NAMES), set(ENTRY_NAMES), set(IMPORT_NAMES))
    assert_balanced()  # the world keeps its own books
    return World(
        ids={
            "webhook": {"people": people.pk, "other": other.pk},
            "lead": {name: lead.pk for name, lead in leads.items()},
            "send": sends,
            "entry": {name: entry.pk for name, entry in entries.items()},
            "import": {name: imp.pk for name, imp in imports.items()},
        },
        sessions=sessions,
        secrets={people.pk: people.callback_secret, other.pk: other.callback_secret},
    )


@contextmanager
def rolled_back() -> Iterator[None]:
    """One example, in a savepoint rolled back at its end (on a failure too); the cache cleared
    first, so no count an earlier example cached outlives its rows."""
    cache.clear()
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


# --- The books ----------------------------------------------------------------------------------


@functools.cache
def rq_queues() -> list:
    """RQ's queues, made once (each get_queue() opens a Redis connection of its own)."""
    return [django_rq.get_queue(name) for name in django_settings.RQ_QUEUES]


def books() -> dict[str, Any]:
    """Everything a refused request must leave as it was, table by table."""

    def rows(model, *fields):
        return list(model.objects.order_by("pk").values_list("pk", *fields))

    return {
        "usage": rows(CreditUsage, "day", "reserved", "spent"),
        "reservations": rows(
            CreditReservation,
            "lead_id",
            "amount",
            "charged",
            "actual",
            "state",
            "doubtful",
            "expires_at",
            "closed_at",
        ),
        "leads": rows(
            Lead,
            "state",
            "webhook_id",
            "next_attempt_at",
            "attempt_count",
            "defer_reason",
            "last_error",
            "enriched",
            "enriched_at",
            "credits_actual",
            "served",
        ),  # fmt: skip
        "dead_letters": rows(DeadLetter, "state", "retry_count", "max_retries", "next_retry_at"),
        "breakers": rows(
            CircuitBreaker,
            "state",
            "opened_at",
            "consecutive_failures",
            "half_open_in_flight",
            "half_open_successes",
        ),
        "circuit_events": rows(CircuitEvent),
        "webhooks": rows(Webhook, "rows_sent", "is_active", "is_full", "paused_until", "broken_reason"),
        "workspaces": rows(Workspace, "paused_until", "pause_reason"),
        "budgets": rows(CreditBudget, "daily_limit"),
        "imports": rows(LeadImport, "state", "webhook_id"),
        "cache": rows(EnrichmentCache, "domain", "data", "fetched_at", "expires_at", "hits"),
        "queues": [(queue.name, queue.count) for queue in rq_queues()],
    }


def assert_unchanged(before: dict[str, Any], response) -> None:
    after = books()
    changed = {
        table: {
            "gone": [r for r in rows if r not in after[table]],
            "new": [r for r in after[table] if r not in rows],
        }
        for table, rows in before.items()
        if after[table] != rows
    }
    assert not changed, f"answered {response.status_code}, yet the books changed: {changed}"


def assert_balanced() -> None:
    """Each usage row agrees with its reservations; nothing negative; within the daily limit."""
    reservations = list(
        CreditReservation.objects.values_list("usage_id", "state", "amount", "charged", "actual")
    )
    for usage in CreditUsage.objects.select_related("budget"):
        mine = [r for r in reservations if r[0] == usage.pk]
        held = sum((amount for _, state, amount, _, _ in mine if state == "held"), Decimal("0"))
        charged = sum((c for _, state, _, c, _ in mine if state == "settled"), Decimal("0"))
        where = f"usage {usage}"
        assert usage.reserved >= 0 and usage.spent >= 0, where
        assert usage.reserved == held, f"{where}: its held reservations hold {held}"
        assert usage.spent == charged, f"{where}: its settled reservations charged {charged}"
        assert usage.reserved + usage.spent <= usage.budget.daily_limit, where
    for _, state, amount, charged, actual in reservations:
        assert amount >= 0 and (charged or 0) >= 0 and (actual or 0) >= 0, (state, amount, charged, actual)
        assert (charged is not None) == (state == "settled"), (state, charged)
    assert not Lead.objects.filter(credits_actual__lt=0).exists()


# --- Strategies: what a browser (or anyone) may send the dashboard --------------------------------

ROLES = st.sampled_from(ROLE_NAMES)
REFS = st.sampled_from(
    [Ref("webhook", name) for name in ("people", "other")]
    + [Ref("lead", name) for name in LEAD_NAMES]
    + [Ref("entry", name) for name in ENTRY_NAMES]
    + [Ref("import", name) for name in IMPORT_NAMES]
)
# Numbers as a path, a form or a query string carries them: any integer, zero, signs, 19+ digits,
# unicode digits (int() takes '١٢' but not '²'), exponents, floats, spaces, underscores.
NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(
        ["0", "00", "-1", "+1", "²", "١٢", "１２", "1e3", "1.5", "0x1f", "NaN", "1_0", " 1"]
        + ["9" * 18, "9" * 19, "9" * 40]
    ),
)
ID_TEXTS = st.one_of(REFS.map(as_text), NUMBERS, st.text(max_size=5))
PATH_VALUES = st.one_of(st.builds(Existing, st.integers(0, 20)), NUMBERS, st.text(max_size=20))
PATHS = st.fixed_dictionaries({name: PATH_VALUES for name in PATH_PARAMETERS})
CHOICES = st.sampled_from(
    [*Lead.State.values, *DeadLetter.State.values]
    + ["any", "wait", "resend", "deliver", "server_error", "timeout", "client_error", "dlq_retry"]
    + ["callback_refused", "otto", "on"]
)
DATES = st.one_of(
    st.sampled_from(["0001-01-01", "9999-12-31", "2026-02-30", "10000-01-01", "12/31/9999", "31.12.9999"]),
    st.dates().map(date.isoformat),
)
CURSORS = st.one_of(
    st.tuples(st.integers(), st.integers()).map(lambda t: f"{t[0]}_{t[1]}"),
    st.sampled_from(["_", "1_", "_1", "²_²", f"{2**70}_1", f"1_{2**70}"]),
)
NEXT_URLS = st.sampled_from(
    ["/leads/", "//evil.example/", "http://testserver/dlq/", "https://evil.example/", "javascript:alert(1)"]
    + ["/\\evil.example", "http://[::1", "\x00/", "", "x", "1", "dashboard:overview", "admin:index"]
)
TEXTS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["\x00", "a\x00b", "%", "_", "' OR 1=1 --", "x" * 300, "😀", "acme0.com", "p0@acme0.com"]
    ),
)
# Each key a view reads (grep request.GET / request.POST, the filter forms, login) with values of the
# kind it expects; any of them may get a value meant for another key instead.
FIELD_VALUES = {
    "q": TEXTS,
    "state": CHOICES,
    "webhook": ID_TEXTS,
    "lead_import": ID_TEXTS,
    "cursor": CURSORS,
    "size": NUMBERS,
    "v": TEXTS,
    "error_class": st.one_of(CHOICES, TEXTS),
    "since": DATES,
    "until": DATES,
    "action": CHOICES,
    "user": st.one_of(CHOICES, TEXTS),
    "reason": TEXTS,
    "only": ID_TEXTS,
    "id": ID_TEXTS,
    "minutes": NUMBERS,
    "next": NEXT_URLS,
    "file": TEXTS,
    "username": TEXTS,
    "password": TEXTS,
}
ANY_VALUE = st.one_of(ID_TEXTS, CHOICES, DATES, CURSORS, NEXT_URLS, TEXTS)
FIELDS = st.fixed_dictionaries(
    {}, optional={key: st.one_of(values, ANY_VALUE) for key, values in FIELD_VALUES.items()}
).map(lambda fields: list(fields.items()))
# More pairs: the keys the issue names (no view reads them), keys given twice, any key at all.
OTHER_KEYS = st.one_of(
    st.sampled_from([*FIELD_VALUES, "page", "class", "filter", "sort"]), st.text(max_size=8)
)
PAIRS = st.tuples(FIELDS, st.lists(st.tuples(OTHER_KEYS, ANY_VALUE), max_size=3)).map(lambda t: t[0] + t[1])
QUERY_STRINGS = st.one_of(
    PAIRS.map(lambda pairs: ("encoded", pairs)),
    st.text(max_size=40).map(lambda raw: ("raw", raw)),  # as typed: '%zz', '&&=', '#', unicode
)
FILENAMES = st.one_of(
    st.sampled_from(
        ["leads.csv", "LEADS.TXT", "x.csv.exe", "../../etc/passwd.csv", ".csv", "a\\b.csv", "a\x00.csv"]
    ),
    st.text(max_size=20).map(lambda name: name + ".csv"),
    st.text(max_size=20),
)
CSV_CONTENTS = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"", b"email,domain\na@b.com,b.com\n", b"\xef\xbb\xbfemail\n\x00@x.com\n"]),
)
FORMS = st.fixed_dictionaries(
    {
        "pairs": PAIRS,
        "ids": st.lists(ID_TEXTS, max_size=6),
        "upload": st.none() | st.tuples(FILENAMES, CSV_CONTENTS),
        "encoding": st.sampled_from(["multipart", "urlencoded"]),
    }
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40
)
HTMX_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "HX-Request": st.just("true") | HEADER_TEXT,
        "HX-Current-URL": st.sampled_from(["http://testserver/leads/?state=dead", "http://[", "/dlq/"])
        | HEADER_TEXT,
        "HX-History-Restore-Request": st.sampled_from(["true", "false", ""]),
        "HX-Target": HEADER_TEXT,
        "HX-Trigger": HEADER_TEXT,
        "HX-Boosted": st.just("true"),
    },
)


def form(*pairs: tuple[str, Any], ids: tuple = (), upload=None, encoding: str = "multipart") -> dict:
    """A FORMS value, for explicit examples."""
    return {"pairs": list(pairs), "ids": list(ids), "upload": upload, "encoding": encoding}


def query_string(world: World, query: tuple[str, Any]) -> str:
    kind, value = query
    return value if kind == "raw" else urlencode([(k, world.resolve(v)) for k, v in value], quote_via=quote)


def post_form(world: World, client: Client, url: str, form: dict, headers: dict):
    pairs = [(key, world.resolve(value)) for key, value in form["pairs"]]
    pairs += [("ids", world.resolve(value)) for value in form["ids"]]
    if form["encoding"] == "urlencoded" and form["upload"] is None:
        body = urlencode(pairs, quote_via=quote)
        return client.post(url, body, content_type="application/x-www-form-urlencoded", headers=headers)
    data: dict[str, Any] = {}
    for key, value in pairs:
        data.setdefault(key, []).append(value)
    if form["upload"] is not None:
        data["file"] = upload = io.BytesIO(form["upload"][1])  # an UploadedFile would clean the name
        upload.name = form["upload"][0]
    return client.post(url, data, headers=headers)


def finished(response):
    """The response, a streamed body (a CSV export) read to its end inside the example's savepoint:
    it queries, and may fail, only while it is read."""
    if response.streaming:
        response.content_read = b"".join(response.streaming_content)
    return response


# --- The dashboard (and every other URL) ---------------------------------------------------------

EXISTING = {name: Existing(0) for name in PATH_PARAMETERS}
MALFORMED_HX_CURRENT_URL = {"HX-Request": "true", "HX-Current-URL": "http://["}


@pytest.mark.parametrize("name", sorted(ROUTES))
@examples(10)
@given(role=ROLES, path=PATHS, query=QUERY_STRINGS, htmx=HTMX_HEADERS)
# An htmx poll after the session ended, with a malformed HX-Current-URL: urlsplit() raised.
@example(role="anonymous", path=EXISTING, query=("raw", ""), htmx=MALFORMED_HX_CURRENT_URL)
# The DLQ filtered up "to" the last day there is: the day after it overflowed.
@example(role="viewer", path=EXISTING, query=("encoded", [("until", "9999-12-31")]), htmx={})
# A NUL in the DLQ's error-class filter (it takes any class): PostgreSQL refuses NUL in text.
@example(role="viewer", path=EXISTING, query=("encoded", [("error_class", "\x00")]), htmx={})
def test_no_get_answers_500_or_changes_the_books(world, name, role, path, query, htmx):
    url = f"{world.url(ROUTES[name], path)}?{query_string(world, query)}"
    with rolled_back():
        before = books()
        response = finished(world.client(role).get(url, headers=htmx))
        if name == "readyz":  # its 503 is the answer it exists to give (no worker in these tests)
            assert response.status_code in (200, 503) and "problems" in response.json()
        else:
            assert response.status_code < 500
        assert_unchanged(before, response)


@pytest.mark.parametrize("name", sorted(ROUTES))
@examples(10)
@given(role=ROLES, path=PATHS, form=FORMS, htmx=HTMX_HEADERS)
@example(role="anonymous", path=EXISTING, form=form(), htmx=MALFORMED_HX_CURRENT_URL)
# The DLQ's actions answer htmx with the DLQ's page, filtered by the form's own fields.
@example(role="operator", path=EXISTING, form=form(("until", "9999-12-31")), htmx={"HX-Request": "true"})
# A `next` that is neither a path nor a URL ("x"): redirect() took it for a URL pattern's name.
@example(
    role="operator",
    path=EXISTING,
    form=form(("action", "wait"), ("state", "overdue"), ("next", "x")),
    htmx={},
)
# NULs in the texts actions store or filter by (a breaker's reason, a drain's error class).
@example(role="operator", path=EXISTING, form=form(("reason", "\x00"), ("error_class", "\x00")), htmx={})
def test_no_post_answers_500_and_only_an_operator_changes_the_books(world, name, role, path, form, htmx):
    url = world.url(ROUTES[name], path)
    with rolled_back():
        before = books()
        response = finished(post_form(world, world.client(role), url, form, htmx))
        assert response.status_code < 500
        if role == "operator" and response.status_code < 400:
            assert_balanced()  # the operator acted: the books may change, but stay balanced
        else:
            assert_unchanged(before, response)


# --- Strategies: what Clay (or anyone) may post to the callback -----------------------------------

PEOPLE, OTHER = Ref("webhook", "people"), Ref("webhook", "other")
HOOKS = st.sampled_from([PEOPLE, PEOPLE, OTHER, 10**15])  # 10**15: no such webhook
SECRETS = st.one_of(st.sampled_from([RIGHT_SECRET, OTHER_SECRET, NO_SECRET, ""]), HEADER_TEXT)
MOSTLY_RIGHT_SECRETS = st.just(RIGHT_SECRET) | SECRETS
# Text as JSON carries it: anything, NUL, unpaired surrogates (valid JSON as "\ud800"), BOMs.
JSON_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
    st.sampled_from(["\x00", "a\x00b", "\ufeff", "😀", "\u2028", "ok"]),
)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), JSON_TEXT)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(JSON_TEXT, children, max_size=4),
    max_leaves=12,
)
LEAD_REFS = st.sampled_from([Ref("lead", name) for name in LEAD_NAMES])
SEND_REFS = st.sampled_from([Ref("send", name) for name in SENT_LEADS])
WRONG_IDS = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(),
    st.sampled_from(["1e20", "NaN", "-1", "0", "²", "١", "1.0", " 1", "", "9" * 19, "9" * 400]),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(LEAD_REFS, max_size=2),
)
LEAD_IDS = st.one_of(LEAD_REFS, LEAD_REFS.map(as_text), WRONG_IDS)
SEND_IDS = st.one_of(SEND_REFS, SEND_REFS.map(as_text), WRONG_IDS)
CREDITS = st.one_of(
    st.integers(0, 1000),
    st.decimals(min_value=0, max_value=1000, places=3).map(str),
    st.floats(),
    st.integers(),
    st.sampled_from(
        ["1e20", "NaN", "-0", "0", "1000", "1000.00", "1000.001", "999.995", "-1", "abc", "1_000"]
        + ["0x10", "Infinity", "1e-1000000", "0E+1000000"]
        + ["", " 5", "1e-999999999999999999", "9" * 5000]
    ),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 10), max_size=2),
    st.dictionaries(JSON_TEXT, JSON_SCALARS, max_size=1),
)
STATUSES = st.sampled_from(["ok", "failed", "FAILED", "error", " error", "done"]) | JSON_SCALARS
ROWS = st.tuples(
    st.fixed_dictionaries(
        {LEAD_ID_FIELD: LEAD_IDS},
        optional={SEND_ID_FIELD: SEND_IDS, "credits_used": CREDITS, "enrichment_status": STATUSES},
    ),
    st.dictionaries(JSON_TEXT, JSON_VALUES, max_size=4),  # Clay's columns
).map(lambda t: {**t[1], **t[0]})
ROW_BODIES = st.one_of(
    ROWS,
    st.lists(ROWS, max_size=5),
    st.tuples(ROWS, st.sampled_from([99, 100, 101, 250])).map(lambda t: [t[0]] * t[1]),
)
ENSURE_ASCII = st.booleans()
# Text that is nearly JSON: tokens Clay would never send, put together any way.
NEAR_JSON = st.lists(
    st.sampled_from(
        ["{", "}", "[", "]", ":", ",", '"clayops_lead_id"', '"credits_used"', '"clayops_send_id"', "1e400"]
        + ["NaN", "-Infinity", "null", "true"]
        + ['"\\u0000"', '"\\ud800"', '"\\udc00\\ud800"', " ", '"x"', "-0", "\ufeff"]
        + ["1" * 30, "[" * 30, "]" * 30]
    )
    | LEAD_REFS.map(as_text),
    max_size=30,
)
RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    NEAR_JSON.map(lambda tokens: ("tokens", tokens)),
    st.tuples(JSON_VALUES, ENSURE_ASCII).map(lambda t: ("json", t)),
    # Around the 1,000,000-byte limit (413), and past Django's own limit on a body.
    st.sampled_from([999_999, 1_000_000, 1_000_001, 5 * 1024 * 1024 + 1]).map(lambda n: ("big", n)),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1"]
        + ["application/json; charset=nope", "text/plain", "application/x-www-form-urlencoded", ""]
        + ["multipart/form-data", "multipart/form-data; boundary=x"]
    ),
    HEADER_TEXT,
)
# None: what the client computes. Else a length a server passes on: 0, shorter or longer than the
# body (which is then cut short, or ends early as when a client hangs up), past every limit.
CONTENT_LENGTHS = st.one_of(st.none(), st.integers(0, 400), st.just(10**9))


def encode_json(value: Any, ensure_ascii: bool) -> bytes:
    # Unpaired surrogates make valid JSON escaped (ensure_ascii); unescaped they make bad UTF-8.
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def raw_body(world: World, raw: Any) -> bytes:
    if isinstance(raw, bytes):
        return raw
    kind, value = raw
    if kind == "tokens":
        return "".join(str(world.resolve(token)) for token in value).encode("utf-8", "surrogatepass")
    if kind == "json":
        return encode_json(world.resolve(value[0]), value[1])
    return b'{"padding": "' + b"x" * (value - 15) + b'"}'  # "big": value bytes in all


def check_callback(world: World, hook, secret, body: bytes, content_type="application/json", length=None):
    """Post `body` to the callback of `hook` with `secret` in the header; check what it answered."""
    webhook_id = world.resolve(hook)
    right = world.secrets.get(webhook_id)
    if secret is RIGHT_SECRET:
        secret = right
    elif secret is OTHER_SECRET:
        secret = next(other for pk, other in world.secrets.items() if pk != webhook_id)
    headers = {} if secret is None else {CALLBACK_HEADER: secret}
    extra = {}
    if length is not None:  # the stream ends where the body ends, as a socket's would
        extra = {"CONTENT_LENGTH": str(length), "wsgi.input": io.BytesIO(body)}
    with rolled_back():
        before = books()
        # generic(): the body goes as these bytes, whatever charset the content type names.
        response = Client().generic(
            "POST",
            f"/api/clay/callback/{webhook_id}/",
            body,
            headers=headers,
            CONTENT_TYPE=content_type,
            **extra,
        )
        assert response.status_code < 500, response.content[:500]
        if right is None or secret != right:
            assert response.status_code in (401, 404), (
                "a callback without its webhook's secret was not refused"
            )
        if response.status_code >= 400:
            assert_unchanged(before, response)
        else:
            assert_balanced()


# --- The callback --------------------------------------------------------------------------------

ACCEPTED = Ref("lead", "accepted")


@examples(120)
@given(hook=HOOKS, secret=MOSTLY_RIGHT_SECRETS, body=ROW_BODIES, ensure_ascii=ENSURE_ASCII)
# Credits within 0..1000 with an exponent PostgreSQL's numeric cannot hold.
@example(
    hook=PEOPLE,
    secret=RIGHT_SECRET,
    body={LEAD_ID_FIELD: ACCEPTED, "credits_used": "1e-1000000"},
    ensure_ascii=True,
)
# Text PostgreSQL's jsonb refuses: NUL, an unpaired surrogate (valid JSON as "\u0000", "\ud800").
@example(
    hook=PEOPLE, secret=RIGHT_SECRET, body={LEAD_ID_FIELD: ACCEPTED, "company": "a\x00b"}, ensure_ascii=True
)
@example(
    hook=PEOPLE, secret=RIGHT_SECRET, body={LEAD_ID_FIELD: ACCEPTED, "company": "\ud800"}, ensure_ascii=True
)
# ... in a refused row too: the refusal's audit entry quotes the lead id.
@example(hook=PEOPLE, secret=RIGHT_SECRET, body={LEAD_ID_FIELD: "\x00"}, ensure_ascii=True)
def test_no_row_shaped_like_clays_answers_500_or_changes_the_books_when_refused(
    world, hook, secret, body, ensure_ascii
):
    check_callback(world, hook, secret, encode_json(world.resolve(body), ensure_ascii))


@examples(80)
@given(hook=HOOKS, secret=MOSTLY_RIGHT_SECRETS, document=JSON_VALUES, lead=st.none() | LEAD_REFS)
@example(hook=PEOPLE, secret=RIGHT_SECRET, document={"\ud800": None}, lead=ACCEPTED)  # as a key
def test_no_json_document_answers_500_or_changes_the_books_when_refused(world, hook, secret, document, lead):
    if lead is not None and isinstance(document, dict):
        document = {**document, LEAD_ID_FIELD: lead}
    check_callback(world, hook, secret, encode_json(world.resolve(document), ensure_ascii=True))


@examples(100)
@given(
    hook=HOOKS,
    secret=MOSTLY_RIGHT_SECRETS,
    raw=RAW_BODIES,
    content_type=CONTENT_TYPES,
    length=CONTENT_LENGTHS,
)
def test_no_bytes_or_headers_answer_500_or_change_the_books_when_refused(
    world, hook, secret, raw, content_type, length
):
    check_callback(world, hook, secret, raw_body(world, raw), content_type, length)
