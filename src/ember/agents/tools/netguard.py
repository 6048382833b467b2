"""Which addresses `http_fetch` may connect to: the host allowlist, checked after DNS resolution.

Invariants:
- A host is allowed when it is named in `allow_hosts` exactly (a name, or an IP in its canonical
  form) or matches a wildcard ("*", or "*.example.com" for its subdomains).
- Every address the host resolves to is checked, not just the first: if ANY of them is not
  public (private, loopback, link-local, multicast, reserved, unspecified, shared/CGNAT, or an
  IPv4-mapped IPv6 form of one), the host is refused unless it was named exactly. Wildcards
  never reach a non-public address.
- The caller connects to the addresses returned here (the next one when a connection fails),
  never to the name again: a DNS answer that changes between the check and the connection
  (rebinding) cannot redirect the request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """The target is not allowed; the message says why, for the model."""


@dataclass(frozen=True)
class Target:
    host: str  # as in the URL, lowercased (an IPv6 address without brackets)
    addresses: tuple[str, ...]  # the checked IPs to connect to, in the resolver's order


def canonical_host(host: str) -> str:
    """Lowercase; an IP in its canonical form (so "127.000.0.1" is not a way around a list)."""
    name = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        # An internationalised name as DNS (and allow_hosts) spell it: "bücher.de" -> "xn--bcher-kva.de".
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def match(host: str, allow_hosts: tuple[str, ...]) -> Literal["exact", "wildcard"] | None:
    if host in allow_hosts:
        return "exact"
    for entry in allow_hosts:
        if entry == "*" or (entry.startswith("*.") and host.endswith(entry[1:])):
            return "wildcard"
    return None


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


async def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Refused(f"cannot resolve {host!r}: {exc.strerror}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # An IPv6 sockaddr may carry a zone ("fe80::1%eth0"): it is link-local either way.
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise Refused(f"{host!r} has no address")
    return addresses


async def check(host: str, port: int, allow_hosts: tuple[str, ...]) -> Target:
    """The address to connect to for `host`, or Refused."""
    name = canonical_host(host)
    how = match(name, allow_hosts)
    if how is None:
        raise Refused(f"host {name!r} is not in allow_hosts ({', '.join(allow_hosts)})")
    addresses = await resolve(name, port)
    if how == "wildcard":
        private = [str(ip) for ip in addresses if not is_public(ip)]
        if private:
            raise Refused(
                f"host {name!r} resolves to a non-public address ({', '.join(private)}); "
                "only a host named exactly in allow_hosts may"
            )
    return Target(host=name, addresses=tuple(str(ip) for ip in addresses))
