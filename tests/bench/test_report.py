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


def _area_of(stack: str) -> str:
    area: str = top_costs(f"{stack} 1")["areas"][0]["area"]
    return area


def test_top_costs_attributes_self_time_to_functions_and_areas() -> None:
    hot_path = "main (a.py:1);handle (balancing/api/call.py:10)"
    engine = "main (a.py:1);_send (balancing/engine/runtime.py:5)"
    loop = "main (a.py:1);Runner.run (asyncio/runners.py:118)"
    collapsed = f"{hot_path} 30\n{engine} 50\n{loop} 20\nnot a stack line\n"

    costs = top_costs(collapsed)

    # every sample counted once, by its leaf function, the costliest first
    assert costs["samples"] == 100
    assert [f["share"] for f in costs["functions"]] == [0.5, 0.3, 0.2]
    assert costs["functions"][0]["function"].startswith("_send ")
    # the three stacks fall in three areas, each with its own share
    areas = {a["area"]: a["share"] for a in costs["areas"]}
    assert len({_area_of(hot_path), _area_of(engine), _area_of(loop)}) == 3
    assert areas[_area_of(engine)] == 0.5
    assert areas[_area_of(hot_path)] == 0.3
    assert areas[_area_of(loop)] == 0.2
