"""docker-compose.yml, checked without Docker: every service can start with what the repo holds.

Docker does not run on the development machine, so this reads the file the way `docker compose`
would and checks what would otherwise fail only at deploy time: a command naming a module or a
management command that does not exist, a mounted file missing from the repo, a scrape target
that is not a service.
"""

from __future__ import annotations

import importlib
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker", "beat")
NEEDS_HEALTHCHECK = ("postgres", "redis", "web", "worker", "prometheus", "grafana")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _healthcheck_argv(test: list[str] | str) -> list[str]:
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    return shlex.split(rest[0]) if kind == "CMD-SHELL" else rest


def _default(value: str) -> str:
    """The default of a `${NAME:-default}` interpolation (compose fills it when NAME is unset)."""
    if value.startswith("${") and ":-" in value:
        return value[value.index(":-") + 2 : -1]
    return value


def _option(argv: list[str], *names: str) -> str:
    for index, part in enumerate(argv):
        if part in names:
            return argv[index + 1]
    raise AssertionError(f"{names} not in {argv}")


def _import_target(target: str) -> object:
    module, _, attribute = target.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def _check_project_program(argv: list[str]) -> None:
    """Fail when argv would not start because the project lacks what it names."""
    program = argv[0]
    if program == "uvicorn":
        assert _import_target(argv[1]) is not None
    elif program == "celery":
        app = _import_target(_option(argv, "-A", "--app") + ".celery:app")
        assert app is not None
        if "--scheduler" in argv:
            assert _import_target(_option(argv, "--scheduler")) is not None
    elif program == "python" and argv[1] == "manage.py":
        assert (ROOT / "manage.py").is_file()
        assert argv[2] in get_commands(), f"no management command {argv[2]!r}"
    elif program == "python" and argv[1] == "-c":
        compile(argv[2], "<healthcheck>", "exec")
    elif program == "mcppool":
        assert argv[1] in {"apply", "export"} or argv[1] in get_commands()
    else:
        raise AssertionError(f"unknown program {program!r} for an mcppool service")


def test_compose_every_service_has_image_or_build(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name
    for name in APP_SERVICES:
        assert services[name]["build"]["context"] == "."
    assert (ROOT / "Dockerfile").is_file()


def test_compose_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name in NEEDS_HEALTHCHECK:
        assert services[name]["healthcheck"]["test"], name


def test_compose_app_commands_exist_in_project(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        _check_project_program(_argv(services[name]["command"]))
    for name in ("web", "worker"):
        _check_project_program(_healthcheck_argv(services[name]["healthcheck"]["test"]))


def _container_ports(service: dict[str, Any]) -> set[str]:
    """The ports a service offers to others: published (`host:container`) and exposed."""
    published = {str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])}
    return published | {str(p) for p in service.get("expose", [])}


def test_compose_web_serves_the_asgi_app_with_lifespan_on_its_published_port(
    services: dict[str, Any],
) -> None:
    from mcppool.asgi import application

    argv = _argv(services["web"]["command"])
    assert argv[0] == "uvicorn"
    assert _import_target(argv[1]) is application  # the app with the runtime's lifespan
    assert _option(argv, "--lifespan") == "on"  # without it the runtime starts on first use
    # without it a process stopping waits for every open stream's client to leave
    assert _option(argv, "--timeout-graceful-shutdown") == "10"
    port = _option(argv, "--port")
    assert port in _container_ports(services["web"])
    # and its health check asks the port it listens on
    assert f"127.0.0.1:{port}/" in " ".join(
        _healthcheck_argv(services["web"]["healthcheck"]["test"])
    )


def test_compose_beat_uses_database_scheduler(services: dict[str, Any]) -> None:
    from django_celery_beat.schedulers import DatabaseScheduler

    argv = _argv(services["beat"]["command"])
    assert "beat" in argv
    scheduler = _import_target(_option(argv, "--scheduler"))
    # intervals edited in the admin reach beat only through the database scheduler
    assert isinstance(scheduler, type)
    assert issubclass(scheduler, DatabaseScheduler)


def test_compose_app_services_get_their_environment(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = services[name]["environment"]
        for variable in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "ALLOWED_HOSTS"):
            assert env.get(variable), (name, variable)
        assert env["DATABASE_URL"].startswith("postgres://")
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:6379/")


def test_compose_app_services_wait_for_migrations(services: dict[str, Any]) -> None:
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name


def test_compose_dependencies_name_services(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, (name, dependency)


def test_compose_mounted_repo_files_exist(compose: dict[str, Any]) -> None:
    named_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in named_volumes, (name, source)


def test_prometheus_scrapes_every_web_process_and_the_worker(services: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # every container of `web` (DNS service discovery), not the one `web` resolves to this time
    (discovery,) = jobs["mcppool-web"]["dns_sd_configs"]
    assert discovery["names"] == ["web"]
    assert discovery["type"] == "A"
    assert str(discovery["port"]) == _option(_argv(services["web"]["command"]), "--port")
    assert str(discovery["port"]) in _container_ports(services["web"])
    (worker,) = jobs["mcppool-worker"]["static_configs"][0]["targets"]
    host, port = worker.split(":")
    worker_env = services["worker"]["environment"]
    assert (host, port) == ("worker", str(worker_env["MCPPOOL_WORKER_METRICS_PORT"]))
    assert port in _container_ports(services["worker"])
    # Prometheus sends a container's IP as the Host header, which its web process must accept
    assert services["web"]["environment"]["MCPPOOL_ALLOW_OWN_ADDRESSES"] == "true"


def test_own_addresses_are_what_the_hostname_resolves_to() -> None:
    from mcppool.settings import own_addresses

    assert "127.0.0.1" in own_addresses("localhost")
    assert own_addresses("name.that-does-not-resolve.invalid") == []


def test_grafana_provisioning_points_at_mounted_folders(services: dict[str, Any]) -> None:
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    url = urllib.parse.urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname in services
    assert str(url.port) in _container_ports(services[url.hostname])
    dashboards = yaml.safe_load((provisioning / "dashboards" / "mcppool.yml").read_text())
    assert dashboards["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]


def test_compose_web_processes_sit_behind_a_round_robin_balancer_without_affinity(
    services: dict[str, Any],
) -> None:
    # three web processes, reached only through the load balancer, which publishes the port
    assert services["web"]["deploy"]["replicas"] == 3
    assert "ports" not in services["web"]
    lb = services["lb"]
    port = _option(_argv(services["web"]["command"]), "--port")
    assert any(str(p).endswith(f":{port}") for p in lb["ports"])
    mounts = dict(volume.split(":")[:2] for volume in lb["volumes"])
    assert mounts["./deploy/haproxy.cfg"] == "/usr/local/etc/haproxy/haproxy.cfg"
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    lines = [line.split("#")[0].split() for line in config.splitlines()]
    directives = [line for line in lines if line]
    # round robin over the `web` service's port, and nothing that pins a client to a process
    assert ["balance", "roundrobin"] in directives
    assert any(d[0] == "server-template" and f"web:{port}" in d for d in directives)
    assert not any(d[0] in ("stick", "stick-table", "cookie", "hash-type") for d in directives)
