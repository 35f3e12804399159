"""The example in docs/observability.md: a retried call's trace, rendered from what a real OTLP
receiver got, and the audit line of the same call. The test checks the rendering; with
`MCPPOOL_WRITE_DOCS=1` it also writes both into the page (between the markers).

    MCPPOOL_WRITE_DOCS=1 .venv/bin/python -m pytest tests/observability/test_docs_example.py
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from tests.api.gateway import Gateway
from tests.observability.receiver import Receiver, render
from tests.observability.test_tracing import (
    CLIENT_TRACE,
    TRACEPARENT,
    _gateway_spans,
    _rest_whoami,
    _retried,
    _tools_known,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.upstream]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def _replace(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    assert pattern.search(text), f"docs/observability.md lacks the {name} markers"
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


async def test_docs_example_trace_and_audit_line(
    tracing: TracerProvider,
    receiver: Receiver,
    gateway: Gateway,
    audit_lines: io.StringIO,
) -> None:
    # given / when: a call whose first attempt times out
    await _tools_known(gateway, "replicas")
    status, _ = await _rest_whoami(gateway, "replicas", traceparent=TRACEPARENT)
    assert status == 200
    spans = _gateway_spans(await receiver.wait_for(_retried))
    # then: the rendering shows the server span over two picks and two attempts
    text = render(spans)
    assert text.splitlines()[0].startswith("tools/call whoami  [SERVER]")
    assert text.count("tools/call whoami  [CLIENT") == 2
    assert text.count("mcppool.pick") == 2
    line = json.loads(audit_lines.getvalue().splitlines()[-1])
    assert (line["server"], line["attempts"], line["trace_id"]) == ("fast", 2, CLIENT_TRACE)
    if os.environ.get("MCPPOOL_WRITE_DOCS") == "1":
        page = DOCS.read_text()
        page = _replace(page, "trace", f"```\n{text}\n```")
        page = _replace(page, "audit", f"```json\n{json.dumps(line, indent=2)}\n```")
        DOCS.write_text(page)
