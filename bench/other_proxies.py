"""Other MCP proxies, each in a virtualenv of its own, started next to mcppool in the same run.

* `mcp-proxy` (PyPI, sparfenyuk/mcp-proxy; needs `mcp<2`): serves Streamable HTTP (JSON answers)
  in front of a stdio server, through one kept SDK `ClientSession`. It cannot front an HTTP
  upstream (its other mode is HTTP → stdio), so it is measured on the stdio upstream only.
* `fastmcp` (PyPI `fastmcp`, run by `bench/fastmcp_proxy.py`): `create_proxy()` given a
  connected `fastmcp.Client`, so one upstream session is reused for every call. HTTP and stdio.
* `npm-mcp-proxy` (npm `mcp-proxy`, punkpeye): Streamable HTTP in front of one kept stdio child
  (`--server stream --no-eventStore`). stdio only.
* `sdk-proxy` (`bench/sdk_proxy.py`, mcp 2.x from this project's virtualenv): the SDK's own
  server in front of the SDK's own client, one kept session; `sdk-proxy-per-call` opens a session
  per call. HTTP and stdio upstreams. Written in this repository: a labelled *reference*, never
  counted as a real peer.

Virtualenvs live under `bench/.venvs/` (gitignored) and are created from PyPI on first use; the
npm package is installed under `bench/.venvs/npm-mcp-proxy/` (an npm prefix of the bench's own).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.upstreams import procs
from tests.upstreams.procs import ROOT, UpstreamProcess

VENVS = ROOT / "bench" / ".venvs"
# Pinned so two runs of the benchmark measure the same code; bump deliberately.
MCP_PROXY_REQUIREMENT = "mcp-proxy==0.13.0"
FASTMCP_REQUIREMENT = "fastmcp==4.2.3"
NPM_MCP_PROXY_REQUIREMENT = "mcp-proxy@6.7.19"
STDIO_UPSTREAM = (sys.executable, "-m", "tests.upstreams.faulty", "--transport", "stdio")


@dataclass(frozen=True)
class Upstream:
    """What a proxy forwards to: an HTTP URL, or (stdio) a command the proxy spawns."""

    url: str = ""

    @property
    def stdio(self) -> bool:
        return not self.url


@dataclass(frozen=True)
class Proxy:
    name: str
    description: str
    serves_http: bool
    serves_stdio: bool
    command: Callable[[int, Upstream], list[str]]
    venv: str = ""  # bench/.venvs/<venv>; "" = this project's virtualenv
    requirements: tuple[str, ...] = ()
    path: str = "/mcp"
    real: bool = True  # a third-party proxy from a registry (False: written here, a reference)
    npm: bool = False  # `requirements` are npm packages, installed under bench/.venvs/<venv>

    def supports(self, upstream: Upstream) -> bool:
        return self.serves_stdio if upstream.stdio else self.serves_http

    def python(self) -> str:
        return str(VENVS / self.venv / "bin" / "python") if self.venv else sys.executable

    def version(self) -> str:
        """`name==version` of the proxy package (or of mcp, for ours)."""
        if self.npm:
            return f"npm {self.requirements[0]}"
        package = self.requirements[0].split("==")[0] if self.requirements else "mcp"
        done = subprocess.run(
            [self.python(), "-c",
             f"import importlib.metadata as m; print(m.version({package!r}), m.version('mcp'))"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        versions = done.stdout.split()
        if len(versions) != 2:
            return "unknown"
        return f"{package} {versions[0]} (mcp {versions[1]})"


def _mcp_proxy(port: int, upstream: Upstream) -> list[str]:
    return [
        str(VENVS / "mcp-proxy" / "bin" / "mcp-proxy"),
        "--port", str(port), "--host", "127.0.0.1",
        "--pass-environment", "--cwd", str(ROOT),
        "--", *STDIO_UPSTREAM, "--name", "mcp-proxy-upstream",
    ]  # fmt: skip


def _fastmcp_proxy(port: int, upstream: Upstream) -> list[str]:
    command = [str(VENVS / "fastmcp" / "bin" / "python"), str(ROOT / "bench" / "fastmcp_proxy.py"),
               "--port", str(port)]  # fmt: skip
    if upstream.stdio:
        return [*command, "--cwd", str(ROOT), "--", *STDIO_UPSTREAM]
    return [*command, "--upstream", upstream.url]


def _npm_mcp_proxy(port: int, upstream: Upstream) -> list[str]:
    return [
        str(VENVS / "npm-mcp-proxy" / "node_modules" / ".bin" / "mcp-proxy"),
        "--host", "127.0.0.1", "--port", str(port), "--server", "stream", "--no-eventStore",
        "--", *STDIO_UPSTREAM,
    ]  # fmt: skip


def _sdk_proxy(per_call: bool) -> Callable[[int, Upstream], list[str]]:
    def command(port: int, upstream: Upstream) -> list[str]:
        flags = [sys.executable, "-m", "bench.sdk_proxy", "--port", str(port)]
        flags += ["--per-call"] if per_call else []
        if upstream.stdio:
            return [*flags, "--cwd", str(ROOT), "--", *STDIO_UPSTREAM]
        return [*flags, "--upstream", upstream.url]

    return command


MCP_PROXY = Proxy(
    "mcp-proxy",
    "PyPI mcp-proxy: Streamable HTTP (JSON) in front of a stdio server, one kept session",
    serves_http=False,
    serves_stdio=True,
    command=_mcp_proxy,
    venv="mcp-proxy",
    requirements=(MCP_PROXY_REQUIREMENT,),
)
FASTMCP_PROXY = Proxy(
    "fastmcp",
    "PyPI fastmcp: create_proxy() on a connected Client (one reused session), Streamable HTTP",
    serves_http=True,
    serves_stdio=True,
    command=_fastmcp_proxy,
    venv="fastmcp",
    requirements=(FASTMCP_REQUIREMENT,),
)
NPM_MCP_PROXY = Proxy(
    "npm-mcp-proxy",
    "npm mcp-proxy: Streamable HTTP in front of one kept stdio child",
    serves_http=False,
    serves_stdio=True,
    command=_npm_mcp_proxy,
    venv="npm-mcp-proxy",
    requirements=(NPM_MCP_PROXY_REQUIREMENT,),
    npm=True,
)
SDK_PROXY = Proxy(
    "sdk-proxy",
    "bench/sdk_proxy.py: the mcp SDK's Server in front of its Client, one kept session",
    serves_http=True,
    serves_stdio=True,
    command=_sdk_proxy(per_call=False),
    real=False,
)
SDK_PROXY_PER_CALL = Proxy(
    "sdk-proxy-per-call",
    "bench/sdk_proxy.py --per-call: the same, a new upstream session for every call",
    serves_http=True,
    serves_stdio=False,  # a stdio session per call spawns a process per call (~1 s)
    command=_sdk_proxy(per_call=True),
    real=False,
)
ALL = (FASTMCP_PROXY, NPM_MCP_PROXY, MCP_PROXY, SDK_PROXY, SDK_PROXY_PER_CALL)
REAL = tuple(p for p in ALL if p.real)


def _install_steps(proxy: Proxy, venv: Path) -> list[list[str]]:
    if proxy.npm:
        return [["npm", "install", "--prefix", str(venv), "--no-audit", "--no-fund",
                 "--loglevel=error", *proxy.requirements]]  # fmt: skip
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    return [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [*pip, *proxy.requirements, "uvloop", "httptools"],
    ]


def ensure_venv(proxy: Proxy, log: Callable[[str], None] = print) -> bool:
    """Install the proxy (PyPI virtualenv or npm prefix) unless it is there; False on failure."""
    if not proxy.venv:
        return True
    venv = VENVS / proxy.venv
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == " ".join(proxy.requirements):
        return True
    log(f"creating {venv} ({' '.join(proxy.requirements)}) from {'npm' if proxy.npm else 'PyPI'}…")
    VENVS.mkdir(parents=True, exist_ok=True)
    steps = _install_steps(proxy, venv)
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log(f"{proxy.name}: install failed:\n{done.stderr[-2000:]}")
            return False
    stamp.write_text(" ".join(proxy.requirements))
    return True


def start(proxy: Proxy, upstream: Upstream) -> UpstreamProcess:
    """Start `proxy` on a free port in front of `upstream`; returns once it accepts connections."""
    # procs' starter retries on a lost port race and reaps the process group on stop.
    process = procs._start_http(proxy.name, lambda port: proxy.command(port, upstream))
    return process


def url(proxy: Proxy, process: UpstreamProcess) -> str:
    return f"http://127.0.0.1:{process.port}{proxy.path}"


def child_upstream_pid(process: UpstreamProcess) -> int | None:
    """The stdio server a proxy spawned (its CPU is the upstream's, not the proxy's)."""
    from bench import procfs

    kids = procfs.children(process.pid)
    return kids[0] if kids else None


def venv_path(proxy: Proxy) -> Path:
    return VENVS / proxy.venv
