"""Where clayops may send requests: the policy for webhook URLs (and alert channel URLs).

A webhook URL is typed by an operator and then posted to by workers with credentials attached, so a
careless or hostile URL must not turn clayops into a way into the network it runs in (SSRF):

- https only, to a host on CLAYOPS_DESTINATION_HOSTS (default: Clay's hosts, ``api.clay.com`` and
  ``*.clay.com``); no user:password@ in the URL;
- no address that is private, loopback, link-local (cloud metadata at 169.254.169.254 among them),
  multicast, reserved or unspecified, unless its network is listed in
  CLAYOPS_DESTINATION_PRIVATE_NETWORKS (the simulator on 127.0.0.1 in development);
- plain http only where CLAYOPS_DESTINATION_ALLOW_HTTP is set (development).

The address is checked where the connection is made (`GuardedBackend`), on the address actually
connected to, so a name that resolved to a public address when the URL was saved and to
127.0.0.1 a minute later (DNS rebinding) is refused too. Redirects are never followed (client.py).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings
from django.core.exceptions import ValidationError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses that are not on the public internet even where the ipaddress module calls them global.
METADATA = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"))
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, used inside some clouds


class DestinationRefused(Exception):
    """The URL or the address it resolves to is not allowed by the destination policy."""


def _networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS]


def address_problem(address: Address) -> str | None:
    """Why connecting to `address` is refused, or None when it may be used."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in _networks()):
        return None
    if any(address in network for network in METADATA):
        return "a cloud metadata address"
    for label, flag in (
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("an unspecified address", address.is_unspecified),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private or address in SHARED),
        ("a reserved address", address.is_reserved),
    ):
        if flag:
            return label
    if not address.is_global:
        return "not a public address"
    return None


def host_allowed(host: str, patterns: Iterable[str] | None = None) -> bool:
    host = host.lower().rstrip(".")
    patterns = settings.CLAYOPS_DESTINATION_HOSTS if patterns is None else patterns
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in patterns)


def url_problem(url: str) -> str | None:
    """Why `url` may not be a destination (scheme, credentials, host, literal address), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    del port  # parsed only to refuse a bad port number
    if parts.scheme not in ("https", "http"):
        return "only https URLs are allowed"
    if parts.scheme == "http" and not settings.CLAYOPS_DESTINATION_ALLOW_HTTP:
        return "only https URLs are allowed (plain http is allowed in development only)"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed (use the token field)"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "the URL has no host"
    if not host_allowed(host):
        allowed = ", ".join(settings.CLAYOPS_DESTINATION_HOSTS) or "none"
        return f"host {host} is not an allowed destination (allowed: {allowed}; CLAYOPS_DESTINATION_HOSTS)"
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return None
    problem = address_problem(literal)
    return f"{host} is {problem}" if problem else None


def resolved_problem(host: str, port: int) -> str | None:
    """Resolve `host` and refuse it when any address it resolves to is refused (save-time check;
    a name that does not resolve now is not an error here: the send-time check decides)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        problem = address_problem(address)
        if problem:
            return f"{host} resolves to {address}, {problem}"
    return None


def validate_destination(url: str) -> None:
    """Model/form validator for a webhook or channel URL."""
    problem = url_problem(url)
    if problem is None:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        problem = resolved_problem(parts.hostname or "", port)
    if problem:
        raise ValidationError(f"Destination refused: {problem}.", code="destination")


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's network backend, resolving names itself and connecting only to allowed addresses."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        refused = None
        for info in infos:
            address = str(info[4][0]).split("%", 1)[0]
            problem = address_problem(ipaddress.ip_address(address))
            if problem:
                refused = f"{host} resolves to {address}, {problem}"
                continue
            # Connect to the address just checked, never to a fresh resolution of the name.
            return super().connect_tcp(address, port, timeout, local_address, socket_options)
        raise DestinationRefused(refused or f"{host} has no address")


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the connection pool built on `GuardedBackend`."""

    def __init__(self, *, limits: httpx.Limits, retries: int = 0) -> None:
        super().__init__(limits=limits, retries=retries, trust_env=False)
        pool = self._pool
        self._pool = httpcore.ConnectionPool(
            ssl_context=pool._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=GuardedBackend(),
        )
        pool.close()
