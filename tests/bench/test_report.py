"""The benchmark report keeps other sections of docs/benchmarks.md and names profile costs."""

from __future__ import annotations

from pathlib import Path

from bench.report import END, START, top_costs, write_docs


def _results() -> dict[str, object]:
    return {
        "machine": {
            "cpus": 2,
            "cpu_model": "test cpu",
            "memory_gb": 1.0,
            "kernel": "6",
            "python": "3.11",
            "load_average_at_start": (0.1, 0.2, 0.3),
            "packages": {"mcp": "2.3.0"},
        },
        "date": "2026-01-01T00:00:00+00:00",
        "seconds": 1.0,
        "settings": {"rounds": 1, "duration_s": 1.0},
        "gateway_cpu_ms_per_call_http": 0.3,
        "throughput": [],
    }


def test_write_docs_replaces_only_the_generated_part(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nintro\n\n{START}\nold numbers\n{END}\n\n## Theirs\n\nkept\n")

    write_docs(docs, _results(), [])

    text = docs.read_text()
    assert "old numbers" not in text
    assert "test cpu" in text
    assert text.startswith("# Benchmarks\n\nintro\n")
    assert text.rstrip().endswith("## Theirs\n\nkept")


def test_write_docs_keeps_an_existing_page_without_markers(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("## Metrics on the hot path\n\ntheir table\n")

    write_docs(docs, _results(), [])
    write_docs(docs, _results(), [])  # a second run replaces its part, never duplicates it

    text = docs.read_text()
    assert text.count(START) == 1
    assert "## Metrics on the hot path\n\ntheir table" in text


def test_top_costs_attributes_self_time_to_functions_and_areas() -> None:
    collapsed = (
        "main (a.py:1);handle (balancing/api/call.py:10) 30\n"
        "main (a.py:1);_send (balancing/engine/runtime.py:5) 50\n"
        "main (a.py:1);Runner.run (asyncio/runners.py:118) 20\n"
    )

    costs = top_costs(collapsed)

    assert costs["samples"] == 100
    assert costs["functions"][0] == {"function": "_send (engine/runtime.py)", "share": 0.5}
    areas = {a["area"]: a["share"] for a in costs["areas"]}
    assert areas["balancing.engine (runtime, sessions, balancer)"] == 0.5
    assert areas["balancing hot path (REST / MCP endpoint, router)"] == 0.3
