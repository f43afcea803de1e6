"""Webhook destinations (issue 10): https to Clay's hosts by default, never a private, loopback,
link-local or metadata address unless allowed, checked on the address actually connected to (DNS
rebinding), no redirects followed, error bodies kept as plain text."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ValidationError

from clayops import delivery, destinations
from clayops.client import ClayClient
from clayops.models import AuditEntry, CircuitBreaker, DeadLetter, HealthSample, Lead
from clayops.retry import ErrorClass
from tests.factories import make_lead, make_webhook

S = Lead.State


@pytest.fixture
def production_policy(settings):
    """The policy as deployed: Clay's hosts, https, no private network allowed."""
    settings.CLAYOPS_DESTINATION_HOSTS = ["api.clay.com", "*.clay.com"]
    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = []
    settings.CLAYOPS_DESTINATION_ALLOW_HTTP = False
    return settings


class Receiver:
    """A real HTTP server on loopback that records what reaches it and answers as told."""

    def __init__(self, status: int = 200, body: bytes = b"{}", headers: dict[str, str] | None = None):
        self.hits: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.hits.append(self.path)
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def client() -> ClayClient:
    return ClayClient(connect_timeout=2, read_timeout=2)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://api.clay.com/v3/sources/webhook/x", "only https"),
        ("ftp://api.clay.com/x", "only https"),
        ("https://user:pw@api.clay.com/x", "credentials"),
        ("https://evil.example.com/x", "not an allowed destination"),
        ("https://api.clay.com.evil.example/x", "not an allowed destination"),
        ("https://api.clay.com:99999/x", "not a valid URL"),
        ("https:///x", "no host"),
    ],
)
def test_a_url_outside_the_policy_is_refused_with_its_reason(production_policy, url, expected):
    assert expected in (destinations.url_problem(url) or "")


@pytest.mark.parametrize(
    "url", ["https://api.clay.com/v3/sources/webhook/abc", "https://eu.clay.com/x", "https://API.CLAY.COM./x"]
)
def test_https_to_clays_hosts_is_allowed(production_policy, url):
    assert destinations.url_problem(url) is None


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.10.1", "link-local"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.5", "private"),
        ("100.64.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused_unless_their_network_is_allowed(settings, address, kind):
    import ipaddress

    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = []
    assert kind in (destinations.address_problem(ipaddress.ip_address(address)) or "")
    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = [address if ":" not in address else f"{address}/128"]
    if address.startswith("::ffff:"):
        settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    assert destinations.address_problem(ipaddress.ip_address(address)) is None


def test_a_public_address_is_allowed(settings):
    import ipaddress

    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = []
    assert destinations.address_problem(ipaddress.ip_address("104.18.20.1")) is None


def test_saving_a_webhook_checks_the_url_and_its_literal_address(production_policy, workspace):
    hook = make_webhook(workspace=workspace, url="https://api.clay.com/v3/sources/webhook/ok")
    hook.full_clean()  # allowed
    for bad in ("https://169.254.169.254/latest/meta-data", "http://127.0.0.1:8080/x", "https://[::1]/x"):
        hook.url = bad
        with pytest.raises(ValidationError, match="Destination refused"):
            hook.full_clean()


def test_saving_refuses_an_allowed_name_that_resolves_to_a_private_address(settings):
    settings.CLAYOPS_DESTINATION_HOSTS = ["localhost"]
    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = []
    settings.CLAYOPS_DESTINATION_ALLOW_HTTP = True
    with pytest.raises(ValidationError, match="resolves to 127.0.0.1, a loopback address"):
        destinations.validate_destination("http://localhost:8080/x")


def test_the_address_is_checked_when_connecting_so_dns_rebinding_is_refused(settings, monkeypatch, receiver):
    """The name was public when the URL was saved; when sending it resolves to 127.0.0.1."""
    target = receiver()
    settings.CLAYOPS_DESTINATION_HOSTS = ["hooks.clay.com"]
    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = []
    settings.CLAYOPS_DESTINATION_ALLOW_HTTP = True
    real = socket.getaddrinfo

    def rebound(host, port, *args, **kw):
        if host == "hooks.clay.com":
            return real("127.0.0.1", port, *args, **kw)
        return real(host, port, *args, **kw)

    monkeypatch.setattr(destinations.socket, "getaddrinfo", rebound)
    result = client().send(f"http://hooks.clay.com:{target.port}/x", {}, b"{}")

    assert result.error_class == ErrorClass.DESTINATION_REFUSED
    assert "resolves to 127.0.0.1, a loopback address" in result.error
    assert not result.uncertain and target.hits == []
    # Allowed explicitly (the simulator in development), the same request goes through.
    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    assert client().send(f"http://hooks.clay.com:{target.port}/x", {}, b"{}").accepted
    assert target.hits == ["/x"]


def test_a_redirect_is_not_followed(settings, receiver):
    inside = receiver()
    outside = receiver(status=302, headers={"location": f"http://127.0.0.1:{inside.port}/secret"})
    result = client().send(f"http://127.0.0.1:{outside.port}/hook", {}, b"{}")
    assert result.status_code == 302 and result.error_class == ErrorClass.CLIENT
    assert inside.hits == []


def test_an_error_body_is_kept_truncated_and_as_plain_text(receiver):
    body = b"\x1b[31mboom\x00<script>alert(1)</script>" + b"x" * 1000
    target = receiver(status=400, body=body)
    result = client().send(f"http://127.0.0.1:{target.port}/hook", {}, b"{}")
    assert result.error_class == ErrorClass.CLIENT
    assert "\x1b" not in result.error and "\x00" not in result.error
    assert result.error.startswith("HTTP 400:  [31mboom <script>")
    assert len(result.error) <= len("HTTP 400: ") + 300


@pytest.mark.django_db
def test_a_refused_webhook_is_taken_out_of_use_and_its_leads_wait_without_a_failure(production_policy):
    """Nothing reached Clay: no DLQ entry, the breaker and health untouched, the operator told."""
    hook = make_webhook(url="http://127.0.0.1:9/v3/sources/webhook/t_people")
    lead = make_lead(1, webhook=hook)

    delivery.submit_batch([lead.pk])

    hook.refresh_from_db()
    lead.refresh_from_db()
    assert not hook.is_active and hook.broken_reason.startswith("destination refused: only https")
    assert AuditEntry.objects.filter(action="webhook_refused").count() == 1
    assert lead.state in (S.QUEUED, S.DEFERRED) and lead.error_class == ErrorClass.DESTINATION_REFUSED
    assert not DeadLetter.objects.exists()
    assert CircuitBreaker.objects.get(webhook=hook).consecutive_failures == 0
    assert not HealthSample.objects.filter(webhook=hook).exists()
