"""Dashboard pages for on-call (staff only): pools overview, one pool, one server.

Numbers come from this process's runtime (`monitoring.live`), structure and history from the
database. The pages then follow the numbers over the WebSocket (`monitoring.consumers`).
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from balancing import adapter
from balancing.engine.runtime import Runtime
from monitoring import live
from monitoring.charts import health_chart
from monitoring.models import HealthCheck
from servers.models import Pool, Server

HISTORY = 120  # checks in the chart: 10 minutes at the default 5 s interval


def _runtime() -> Runtime | None:
    from balancing.host import get_host

    host = get_host()
    return host.runtime if host.started else None


def _numbers(slug: str | None = None) -> list[live.PoolNumbers]:
    runtime = _runtime()
    if runtime is not None and (slug is None or slug in runtime.pools):
        configs = live.runtime_configs(runtime)
    else:  # no runtime in this process (or it has not loaded the pool yet): config only
        configs = list(adapter.load_snapshot().pools)
    if slug is not None:
        configs = [c for c in configs if c.slug == slug]
    return live.all_numbers(configs, runtime)


def _page(request: HttpRequest, template: str, ws: str, **context: Any) -> HttpResponse:
    return render(request, f"dashboard/{template}", {"ws_path": ws, **context})


@staff_member_required
def overview(request: HttpRequest) -> HttpResponse:
    return _page(request, "overview.html", "/ws/dashboard/", pools=_numbers())


@staff_member_required
def pool_detail(request: HttpRequest, slug: str) -> HttpResponse:
    pool = get_object_or_404(Pool, slug=slug)
    numbers = next(iter(_numbers(slug)), None)
    if numbers is None:
        raise Http404("pool not loaded")
    shown = {s.id for s in numbers.servers}
    return _page(
        request,
        "pool.html",
        f"/ws/dashboard/pool/{slug}/",
        pool=pool,
        numbers=numbers,
        disabled=[s for s in pool.servers.all() if s.pk not in shown],
        rules=pool.affinity_rules.select_related("pin_server"),
        flips=live.recent_flips_sync(slug, limit=20),
    )


@staff_member_required
def server_detail(request: HttpRequest, slug: str, name: str) -> HttpResponse:
    server = get_object_or_404(Server.objects.select_related("pool"), pool__slug=slug, name=name)
    pool_numbers = next(iter(_numbers(slug)), None)
    numbers = (
        next((s for s in pool_numbers.servers if s.id == server.pk), None) if pool_numbers else None
    )
    checks = list(HealthCheck.objects.filter(server=server)[:HISTORY])
    return _page(
        request,
        "server.html",
        f"/ws/dashboard/pool/{slug}/",
        server=server,
        numbers=numbers,
        chart=health_chart(checks),
        failed_checks=[c for c in checks if not c.ok][:10],
        flips=server.flips.all()[:20],
        tools=_tools(server),
    )


def _tools(server: Server) -> dict[str, Any]:
    """The server's tools as this process listed them, and how they differ from its siblings'."""
    runtime = _runtime()
    pool = runtime.pools.get(server.pool.slug) if runtime is not None else None
    listed = pool.server_tools.get(server.pk) if pool is not None else None
    if pool is None or listed is None:
        return {"listed": False, "tools": [], "missing": [], "extra": []}
    mine = {t["name"] for t in listed}
    siblings: set[str] = set()
    for server_id, tools in list(pool.server_tools.items()):
        if server_id != server.pk:
            siblings |= {t["name"] for t in tools}
    return {
        "listed": True,
        "tools": sorted(listed, key=lambda t: t["name"]),
        "missing": sorted(siblings - mine) if siblings else [],
        "extra": sorted(mine - siblings) if siblings else [],
    }
