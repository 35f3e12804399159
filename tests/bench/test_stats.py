"""The report arithmetic of the benchmark suite (no benchmark runs here)."""

from __future__ import annotations

import math

import pytest

from bench.loadgen import Response, parse_response
from bench.stats import Latency, median, percentile, ratio


def test_percentile_nearest_rank_reports_a_latency_that_happened() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 … 100

    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(list(reversed(values)), 99) == 99.0


def test_percentile_of_few_values_is_the_largest_for_p99() -> None:
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0
    assert percentile([5.0], 0) == 5.0


def test_percentile_empty_is_nan_and_out_of_range_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="101"):
        percentile([1.0], 101)


def test_median_of_rounds_ignores_missing_values() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([math.nan, 5.0]) == 5.0
    assert math.isnan(median([]))


def test_ratio_with_a_missing_or_zero_denominator_is_nan() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 2.0))


def test_latency_of_seconds_reports_milliseconds() -> None:
    latency = Latency.of([0.001] * 99 + [0.5])

    assert latency.p50_ms == pytest.approx(1.0)
    assert latency.p99_ms == pytest.approx(1.0)
    assert latency.max_ms == pytest.approx(500.0)


def test_parse_response_content_length_waits_for_the_whole_body() -> None:
    buffer = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")

    assert parse_response(buffer, eof=False) is None
    buffer += b"lo" + b"HTTP/1.1 404"
    response = parse_response(buffer, eof=False)

    assert response == Response(200, b"HTTP/1.1 200 OK\r\nContent-Length: 5", b"hello")
    assert buffer == bytearray(b"HTTP/1.1 404")  # the next response stays for the next exchange


def test_parse_response_chunked_joins_chunks_and_reads_headers() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nmcp-session-id: abc\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nfoo\r\n4\r\nbar!\r\n0\r\n\r\n"
    )

    assert parse_response(bytearray(raw[:-3]), eof=False) is None
    response = parse_response(bytearray(raw), eof=False)

    assert response is not None
    assert response.body == b"foobar!"
    assert response.header("Mcp-Session-Id") == "abc"


def test_parse_response_without_length_ends_at_close() -> None:
    buffer = bytearray(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")

    assert parse_response(buffer, eof=False) is None
    response = parse_response(buffer, eof=True)

    assert response is not None
    assert response.body == b"partial"
