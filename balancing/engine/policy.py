"""What an upstream may be: which programs may run (stdio) and where requests may go (HTTP).

The operator decides both, in the environment (`mcppool.settings` builds an `UpstreamPolicy`);
a key holder or an admin user cannot widen them. They are checked twice: when a server is saved
(`Server.clean()`, so the admin, the REST API and `mcppool apply` give the same error) and again
at the last moment — just before a stdio program is spawned, and on every address an HTTP
connection is about to use (after DNS: a name that resolved to an allowed address when it was
saved may resolve to the metadata service later).

Plain Python: no Django, so the engine takes it as it takes its other config.
"""

from __future__ import annotations

import errno
import fnmatch
import ipaddress
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Programs that run whatever their arguments say: allowed only when listed by full path.
SHELLS: Final = frozenset(
    {
        "sh",
        "bash",
        "rbash",
        "dash",
        "zsh",
        "ksh",
        "mksh",
        "pdksh",
        "ash",
        "yash",
        "csh",
        "tcsh",
        "fish",
        "busybox",
        "env",
        "xargs",
        "nohup",
        "setsid",
        "sudo",
        "su",
    }
)
# Environment values that change which code a program loads (or which program a name means).
LOADER_ENV: Final = frozenset(
    {
        "PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONUSERBASE",
        "PYTHONINSPECT",
        "PYTHONEXECUTABLE",
        "PYTHONPLATLIBDIR",
        "PYTHONBREAKPOINT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "NODE_REPL_EXTERNAL_MODULE",
        "NPM_CONFIG_PREFIX",
        "NPM_CONFIG_GLOBALCONFIG",
        "NPM_CONFIG_USERCONFIG",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYLIB",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "GCONV_PATH",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "GIT_EXEC_PATH",
        "GIT_SSH_COMMAND",
    }
)
LOADER_ENV_PREFIXES: Final = ("LD_", "DYLD_", "MALLOC_", "GLIBC_")
# `python` / `python3` in a config means the interpreter that runs mcppool (its virtualenv has
# the example servers), in the engine and in the policy alike.
INTERPRETER_NAMES: Final = ("python", "python3")

# Never an upstream unless MCPPOOL_OUTBOUND_ALLOW lists them: link-local (cloud metadata at
# 169.254.169.254 and fd00:ec2::254, Alibaba's 100.100.100.200), "this host" (0.0.0.0 reaches
# loopback on Linux), multicast and broadcast.
DEFAULT_DENIED: Final = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "0.0.0.0/8",
    "::/128",
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
)
# Loopback and private ranges: allowed by default (the embedded default and tests run their
# upstreams there), denied with MCPPOOL_OUTBOUND_DENY_PRIVATE in production.
PRIVATE: Final = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
)
_LOCAL_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class PolicyRefused(ValueError):
    """An upstream the operator's policy does not allow; `field` names the config field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def interpreter(command: str) -> str:
    return sys.executable if command in INTERPRETER_NAMES else command


# ---- stdio: which programs may run ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRule:
    """One entry of MCPPOOL_STDIO_COMMANDS: a program (full path or glob, or a bare name as the
    config writes it) and, optionally, the arguments it must start with
    (`python -m mcp_server_time` allows that module and nothing else of the interpreter)."""

    pattern: str
    leading_args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entry: str) -> CommandRule:
        words = shlex.split(entry)
        if not words:
            raise ValueError("an empty entry")
        return cls(words[0], tuple(words[1:]))

    @property
    def program(self) -> str:
        return interpreter(self.pattern)

    @property
    def exact_path(self) -> bool:
        return "/" in self.program and not any(c in self.program for c in "*?[")

    def matches(self, command: str, path: str | None, args: Sequence[str]) -> bool:
        program = self.program
        if "/" in program:
            named = path is not None and fnmatch.fnmatchcase(path, program)
        else:
            named = fnmatch.fnmatchcase(command, program)
        return named and tuple(args[: len(self.leading_args)]) == self.leading_args

    def __str__(self) -> str:
        return shlex.join([self.pattern, *self.leading_args])


@dataclass(frozen=True, slots=True)
class CommandPolicy:
    rules: tuple[CommandRule, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> CommandPolicy:
        return cls(tuple(CommandRule.parse(entry) for entry in entries))

    def check(
        self, command: str, args: Sequence[str], env: Mapping[str, str], cwd: str = ""
    ) -> None:
        """Raise PolicyRefused unless the program may run with this environment."""
        loader = sorted(
            name
            for name in env
            if name.upper() in LOADER_ENV or name.upper().startswith(LOADER_ENV_PREFIXES)
        )
        if loader:
            raise PolicyRefused(
                "env",
                f"{', '.join(loader)}: changes which code a program loads; not allowed in a "
                "stdio server's environment",
            )
        program = interpreter(command)
        path = resolve(program, cwd)
        shell = is_shell(program, path)
        for rule in self.rules:
            if not rule.matches(program, path, args):
                continue
            if shell and not (rule.exact_path and rule.program == path):
                continue  # a shell needs its own full path listed, never a glob or a name
            return
        what = "a shell, allowed only when listed by full path" if shell else "not allowed"
        allowed = ", ".join(str(r) for r in self.rules) or "nothing"
        raise PolicyRefused(
            "command",
            f"{command!r} with these arguments is {what} (MCPPOOL_STDIO_COMMANDS allows: "
            f"{allowed})",
        )


def resolve(command: str, cwd: str = "") -> str | None:
    """The program `command` runs: a path made absolute, or a name looked up on our PATH (the
    child inherits it; a configured PATH is refused above)."""
    if "/" in command:
        return os.path.normpath(os.path.join(cwd or os.getcwd(), command))
    return shutil.which(command)


def is_shell(command: str, path: str | None) -> bool:
    names = {os.path.basename(command)}
    if path is not None:
        names |= {os.path.basename(path), os.path.basename(os.path.realpath(path))}
    return bool(names & SHELLS)


# ---- HTTP: where requests may go --------------------------------------------------------------


def networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses); ValueError names the bad one."""
    result = []
    for entry in entries:
        try:
            result.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not a network (CIDR) or address") from None
    return tuple(result)


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    deny: tuple[IPNetwork, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    # The service's own database and broker, `(host, port)`: never an upstream, whatever the
    # networks say (an upstream URL aimed at them lets a key holder talk to them).
    services: tuple[tuple[str, int], ...] = ()

    @classmethod
    def build(
        cls,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        deny_private: bool = False,
        services: Iterable[tuple[str, int]] = (),
    ) -> OutboundPolicy:
        denied = (*DEFAULT_DENIED, *(PRIVATE if deny_private else ()), *deny)
        return cls(networks(denied), networks(allow), tuple(services))

    def check_address(self, host: str, port: int) -> None:
        """Raise PolicyRefused if a connection to `host` (an IP address) : `port` is not allowed."""
        address = _address(host)
        if address is None:
            raise PolicyRefused("url", f"{host!r} is not an IP address")
        for service_host, service_port in self.services:
            if port == service_port and address in _service_addresses(service_host):
                raise PolicyRefused(
                    "url", f"{_show(address, port)} is this service's own database/broker"
                )
        if any(address in n for n in self.deny) and not any(address in n for n in self.allow):
            raise PolicyRefused(
                "url",
                f"{_show(address, port)} is in a denied network (MCPPOOL_OUTBOUND_DENY, link-local "
                "and metadata addresses, or private ranges with MCPPOOL_OUTBOUND_DENY_PRIVATE)",
            )

    def check_url(self, url: str, *, resolve_names: bool = True) -> None:
        """Check a URL as it is saved: its literal address, or every address its name resolves
        to now (a name that does not resolve yet is checked again at connect time)."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise PolicyRefused("url", f"not a valid URL: {exc}") from None
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise PolicyRefused("url", "the URL names no host")
        if _address(host) is not None:
            self.check_address(host, port)
            return
        for service_host, service_port in self.services:
            if port == service_port and host == service_host.lower():
                raise PolicyRefused("url", f"{host}:{port} is this service's own database/broker")
        if host in _LOCAL_NAMES:
            self.check_address("127.0.0.1", port)
            self.check_address("::1", port)
            return
        if resolve_names:
            for address in _resolved(host, port):
                self.check_address(address, port)

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's `TCPConnector(socket_factory=…)`: called with each address a connection is
        about to use, after DNS, so a name rebound to a denied address is refused here."""
        family, type_, proto, _canonname, sockaddr = addr_info
        try:
            self.check_address(str(sockaddr[0]), int(sockaddr[1]))
        except PolicyRefused as refused:
            raise OSError(errno.EACCES, f"refused by the outbound policy: {refused}") from None
        return socket.socket(family=family, type=type_, proto=proto)


def _address(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    return address


def _show(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


_LOOPBACK: Final = networks(("127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"))


class _Addresses:
    """Addresses of a service host; a loopback or wildcard host means every loopback address."""

    def __init__(self, addresses: Iterable[IPAddress], local: bool) -> None:
        self.addresses = frozenset(addresses)
        self.local = local

    def __contains__(self, address: IPAddress) -> bool:
        return address in self.addresses or (self.local and any(address in n for n in _LOOPBACK))


_service_cache: dict[str, _Addresses] = {}


def _service_addresses(host: str) -> _Addresses:
    """Resolved once and kept; a name that does not resolve (yet) is asked again next time."""
    cached = _service_cache.get(host)
    if cached is not None:
        return cached
    literal = _address(host)
    if literal is not None:
        found: list[IPAddress] = [literal]
    elif host.lower() in _LOCAL_NAMES:
        found = [ipaddress.ip_address("127.0.0.1")]
    else:
        found = [a for a in (_address(r) for r in _resolved(host, 0)) if a is not None]
    local = any(a.is_loopback or a.is_unspecified for a in found)
    addresses = _Addresses(found, local)
    if found:
        _service_cache[host] = addresses
    return addresses


def _resolved(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class UpstreamPolicy:
    commands: CommandPolicy = field(default_factory=CommandPolicy)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
