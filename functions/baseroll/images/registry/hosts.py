"""Where the registry client may send a request on a registry's behalf (docs/OCI.md#authentication).

A registry names other hosts: a token realm in its 401 challenge, a redirect target, an upload
``Location``. Each is followed only to the registry itself or to a host on that registry's list
(token hosts for a realm, storage hosts for redirects and uploads), and never to a link-local,
private or (unless the registry is) loopback address, whatever spelling names it: a trailing dot,
``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``[::ffff:169.254.169.254]``. Names are resolved and every
address they resolve to is checked.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Callable, Iterable, Mapping

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]

METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})
GCS = "storage.googleapis.com"
_GCR = re.compile(r"^(?:[a-z0-9-]+\.)?gcr\.io$")
_ARTIFACT_REGISTRY = re.compile(r"^(?:[a-z0-9-]+-)?docker\.pkg\.dev$")
_LOOSE_IPV4 = re.compile(r"^[0-9a-fx.]+$")  # what inet_aton may read as an address: 1-4 parts, dec/hex/octal


def split_netloc(netloc: str) -> tuple[str, str]:
    """``host:port`` → (host, ":port" or ""); ``[v6]:port`` keeps the brackets off the host."""
    netloc = netloc.strip()
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        return host, rest if rest.startswith(":") else ""
    if netloc.count(":") == 1:
        host, _, port = netloc.partition(":")
        return host, f":{port}"
    return netloc, ""


def address(host: str) -> Address | None:
    """The IP address a host string spells, in any form a resolver would accept; None for a name."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    try:
        found: Address = ipaddress.ip_address(host)
    except ValueError:
        if not host or not _LOOSE_IPV4.fullmatch(host):
            return None
        try:  # decimal (2852039166), hex or octal parts: what the C resolver connects to
            found = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def normal_host(host: str) -> str:
    """Lower case, no trailing dot, an address in its canonical form (``2852039166`` → ``169.254.169.254``)."""
    addr = address(host)
    return str(addr) if addr is not None else host.strip().lower().rstrip(".")


def normal_netloc(netloc: str) -> str:
    host, port = split_netloc(netloc)
    host = normal_host(host)
    return f"[{host}]{port}" if ":" in host else f"{host}{port}"


def resolve_addresses(host: str) -> list[str]:
    """Every address ``host`` resolves to (empty when it does not resolve)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError):
        return []


def known_token_hosts(registry: str) -> frozenset[str]:
    """Token realms Google's registries are known to name besides themselves (docs/OCI.md#authentication)."""
    host = normal_host(split_netloc(registry)[0])
    if _GCR.fullmatch(host):
        return frozenset({"gcr.io"})
    return frozenset()


def known_storage_hosts(registry: str) -> frozenset[str]:
    """Where Google's registries are known to redirect blob reads (docs/OCI.md#authentication)."""
    host = normal_host(split_netloc(registry)[0])
    if _GCR.fullmatch(host) or _ARTIFACT_REGISTRY.fullmatch(host):
        return frozenset({GCS})
    return frozenset()


def address_refusal(addr: Address, registry_is_loopback: bool) -> str | None:
    """Why a request handed to us by a registry may not go to ``addr``; None when it may."""
    if addr.is_link_local:
        return "a link-local address (the metadata server lives there)"
    if addr.is_loopback:
        return None if registry_is_loopback else "a loopback address"
    if addr.is_unspecified or addr.is_multicast or addr.is_reserved:
        return "a reserved address"
    if addr.is_private:
        return "a private address"
    return None


class HostPolicy:
    """Per-registry token and storage hosts, and the address checks every other host must pass."""

    def __init__(self, *, token_hosts: Mapping[str, Iterable[str]] | None = None,
                 storage_hosts: Mapping[str, Iterable[str]] | None = None,
                 resolve: Resolver = resolve_addresses) -> None:
        self._token = {normal_netloc(r): frozenset(normal_netloc(h) for h in hs) for r, hs in (token_hosts or {}).items()}
        self._storage = {normal_netloc(r): frozenset(normal_netloc(h) for h in hs)
                         for r, hs in (storage_hosts or {}).items()}
        self._resolve = resolve

    def token_hosts(self, registry: str) -> frozenset[str]:
        return known_token_hosts(registry) | self._token.get(normal_netloc(registry), frozenset())

    def storage_hosts(self, registry: str) -> frozenset[str]:
        return known_storage_hosts(registry) | self._storage.get(normal_netloc(registry), frozenset())

    def refusal(self, netloc: str, registry: str, kind: str) -> str | None:
        """Why ``registry`` may not send us to ``netloc`` for ``kind`` ("realm" or "storage"); None when it may.

        The registry itself always may; any other host must be on its list and pass the address checks.
        """
        target = normal_netloc(netloc)
        if target == normal_netloc(registry):
            return None
        listed = self.token_hosts(registry) if kind == "realm" else self.storage_hosts(registry)
        host = normal_host(split_netloc(netloc)[0])
        if target not in listed and host not in listed:
            return f"{host} is neither the registry nor one of its {kind} hosts"
        return self.address_refusal(host, registry)

    def address_refusal(self, host: str, registry: str) -> str | None:
        """Metadata names, and every address ``host`` is or resolves to, checked against ``address_refusal``."""
        if host in METADATA_NAMES:
            return f"{host} is the metadata server"
        addr = address(host)
        found = [addr] if addr is not None else [a for a in map(address, self._resolve(host)) if a is not None]
        if not found:
            return f"{host} does not resolve"
        reg_addr = address(split_netloc(registry)[0])
        registry_is_loopback = normal_host(split_netloc(registry)[0]) == "localhost" or bool(reg_addr and reg_addr.is_loopback)
        for a in found:
            why = address_refusal(a, registry_is_loopback)
            if why:
                return f"{host} is {why}" if addr is not None else f"{host} resolves to {a}, {why}"
        return None
