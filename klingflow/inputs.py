"""Which inputs a run may read: local folders, remote hosts, private addresses.

A manifest names files and URLs that the worker then opens, probes and uploads. Run from a shell by the
person who wrote the manifest, any file they can read is theirs to use. Run from a deployment or the inbox,
the manifest comes from whoever can trigger a run or drop a file, and the worker's own files
(`/etc/passwd`, a neighbour's project) and its network (a cloud metadata address, an intranet host) must
stay out of reach. The defaults (EditParams): local runs unrestricted; deployment runs confined to the
manifest's folder, inbox runs to the inbox, and private addresses refused in both unless allowed.

Local paths are checked after every symlink is resolved; remote hosts at every request, redirects included
(an allowed host cannot bounce the download to a private one). The address check resolves the name just
before the request; a DNS answer that changes between that lookup and the connection is not caught.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from klingflow.errors import MediaError


class InputPolicy(BaseModel):
    """What one run may read; the default reads anything (a local run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roots: tuple[str, ...] | None = Field(None, description="Folders local inputs must be in; None: any file")
    hosts: tuple[str, ...] = Field((), description="Hosts http(s) inputs may come from ('*.example.com'); (): any")
    private_addresses: bool = Field(True, description="Whether a host may resolve to a non-public address")

    @classmethod
    def confined(
        cls, roots: list[str] | None, hosts: list[str], private: bool | None, *, default_root: Path | None
    ) -> InputPolicy:
        """The policy of a run from its parameters; `default_root` is the folder a deployment or inbox run is
        confined to when `roots` is not given (None: a local run, unconfined)."""
        chosen = roots if roots else ([str(default_root)] if default_root is not None else None)
        return cls(
            roots=tuple(os.path.realpath(Path(r).expanduser()) for r in chosen) if chosen is not None else None,
            hosts=tuple(h.strip().lower() for h in hosts if h.strip()),
            private_addresses=private if private is not None else default_root is None,
        )

    def path_problem(self, path: str) -> str | None:
        """Why this local file is out of bounds, or None."""
        if self.roots is None:
            return None
        real = os.path.realpath(path)
        if any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
            return None
        shown = f" (a link to {real})" if real != os.path.abspath(path) else ""
        return f"{path}{shown} is outside the allowed input folders ({', '.join(self.roots)}); see input_roots"

    def host_problem(self, url: str) -> str | None:
        """Why a URL's host is not on the allow-list, or None (the address check is `check_address`)."""
        host = (urlsplit(url).hostname or "").lower()
        if not self.hosts or any(_host_matches(host, pattern) for pattern in self.hosts):
            return None
        return f"host {host!r} is not in the allowed input hosts ({', '.join(self.hosts)}); see input_hosts"

    def check_address(self, url: str) -> None:
        """MediaError when the URL's host is not allowed or resolves to a non-public address (unless allowed)."""
        if problem := self.host_problem(url):
            raise MediaError(problem)
        if self.private_addresses:
            return
        host = urlsplit(url).hostname or ""
        for address in _addresses(host):
            if not address.is_global:
                raise MediaError(
                    f"host {host!r} resolves to the non-public address {address}; inputs from private addresses "
                    "are refused for this run (see allow_private_addresses)"
                )


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address the host resolves to (a literal address is itself); MediaError if it does not resolve."""
    try:
        return [_unmapped(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MediaError(f"host {host!r} does not resolve ({exc.strerror or exc})") from exc
    return [_unmapped(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos]


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4 address written as IPv6 (::ffff:10.0.0.1) is judged as the IPv4 address it is."""
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address
