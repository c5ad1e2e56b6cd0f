"""Where a server's file request may send the daemon: never to this box or a link-local address.

`origin` says which origin a URL names (the bearer token goes to the API's own origin only).
`is_local_host` judges a URL's host before the request (every address its name resolves to);
`redirect_hook` lets a check judge each redirect before requests follows it.
Names can resolve differently a moment later (DNS rebinding), so `checked_session` also checks
the address each new connection actually reached, before a byte is sent on it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
import urllib3.connection
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from fetcher.errors import TransferError

METADATA_HOSTS = frozenset({"fd00:ec2::254"})  # AWS's IPv6 metadata service (not link-local)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def norm_host(host: str) -> str:
    host = host.strip("[]").rstrip(".").lower()
    with contextlib.suppress(ValueError):  # a name, not an address
        host = ipaddress.ip_address(host).compressed
    return host


def is_local_address(addr: Address) -> bool:
    """Loopback, unspecified, link-local (the cloud's metadata service) or a metadata address."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_loopback
        or addr.is_link_local
        or addr.is_unspecified
        or addr.compressed in METADATA_HOSTS
    )


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def is_local_host(host: str, port: int | None = None) -> bool:
    """This box (loopback, unspecified) or a link-local address: places a server's file request
    may not send the daemon to, unless the API itself is there. Judged on every address the name
    resolves to (`127.1`, `2130706433`, a DNS name pointing at 127.0.0.1 all count)."""
    host = norm_host(host)
    if host == "localhost" or host.endswith(".localhost"):
        return True
    literal = _address(host)
    if literal is not None:
        return is_local_address(literal)
    try:
        found = socket.getaddrinfo(host, port or 80, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # no address: the request fails on its own
    addresses = (_address(str(sockaddr[0])) for *_, sockaddr in found)
    return any(a is not None and is_local_address(a) for a in addresses)


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """`(scheme, host, port)` of an http(s) URL, normalised so that every spelling of one origin
    compares equal: scheme and host in lower case, the default port (80, 443) made explicit, IPv6
    brackets dropped and the address written one way, a trailing dot on the host and everything
    after the authority (path, trailing slash, query) ignored. None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    scheme = parts.scheme.lower()
    host = norm_host(parts.hostname or "")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    found = scheme, host, DEFAULT_PORTS[scheme] if port is None else port
    # The connection is made where urllib3 (under requests) parses the host, and the two parsers
    # disagree on some spellings (`http://other\@api/`: urlsplit reads `api`, urllib3 `other`).
    # Only a URL both read the same way is an origin at all.
    try:
        u3 = parse_url(url.strip())
    except LocationParseError:
        return None
    u3_scheme = (u3.scheme or "").lower()
    u3_port = u3.port if u3.port is not None else DEFAULT_PORTS.get(u3_scheme)
    if (u3_scheme, norm_host(u3.host or ""), u3_port) != found:
        return None
    return found


def redirect_hook(check: Callable[[str], None]) -> Callable[..., None]:
    """A requests response hook that hands each redirect's target (made absolute) to `check`
    before requests follows it; `check` raises to refuse it (the answer is closed first)."""

    def hook(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        if resp.is_redirect:
            try:
                check(urljoin(resp.url, resp.headers.get("location", "")))
            except Exception:
                resp.close()
                raise

    return hook


class LocalPeerRefused(TransferError):
    """A connection for a file request reached this box or a link-local address."""


def _check_peer(sock: socket.socket, host: str) -> None:
    try:
        peer = _address(str(sock.getpeername()[0]))
    except OSError:
        return  # not connected after all: the request fails on its own
    if peer is not None and is_local_address(peer):
        sock.close()
        # not an OSError: urllib3 would take it for a connection failure and retry it
        raise LocalPeerRefused(
            f"the file URL's host {host!r} connected to {peer.compressed}, this box or a"
            " link-local address; refused",
            api_label="bad_response",
        )


class _PeerChecked(urllib3.connection.HTTPConnection):
    """Checks the peer of each new connection (HTTPS too: its `connect` calls `_new_conn` before
    the TLS handshake)."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _CheckedHTTPConnection(_PeerChecked):
    pass


class _CheckedHTTPSConnection(_PeerChecked, urllib3.connection.HTTPSConnection):
    pass


class _CheckedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _CheckedHTTPPool,
            "https": _CheckedHTTPSPool,
        }


def checked_adapter() -> requests.adapters.HTTPAdapter:
    """An adapter whose every new connection is refused if it reached this box or a link-local
    address (so also after a redirect, and whatever the name resolved to a moment before).
    Through an HTTP proxy (HTTP(S)_PROXY) the proxy connects, and only the name check holds."""
    return _CheckedAdapter(pool_connections=8, pool_maxsize=32)
