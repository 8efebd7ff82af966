"""bench/front_cost.py: ratios per round and their spread; the baseline's byte pump moves
bytes both ways; the report shows the spread."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.front_cost import BytePump, Op, cpu_rows, ratio_rows
from bench.report import ratio_cell


def test_ratio_rows_pool_the_rounds_and_keep_each_rounds_ratio() -> None:
    per_round = {
        "front": [[0.011] * 10, [0.030] * 10],
        "direct": [[0.010] * 10, [0.020] * 10],
    }
    direct, front = ratio_rows("op", per_round, {"rounds": 2})
    assert direct["metric"] == "op, direct [baseline]" and direct["n"] == 20
    assert front["metric"] == "op, through the front" and front["n"] == 20
    assert front["ratio_spread"]["p50_per_round"] == [1.1, 1.5]
    assert front["ratio_spread"]["p50_min_max"] == [1.1, 1.5]
    assert front["ratio_spread"]["p95_min_max"] == [1.1, 1.5]
    assert front["ratio_p50_vs_baseline"] == 1.3  # the rounds' median, not the pooled ratio
    assert front["ratio_p95_vs_baseline"] == 1.3
    assert front["parameters"]["p50_ms_per_round"] == {
        "front": [11.0, 30.0],
        "direct": [10.0, 20.0],
    }
    cell = ratio_cell(front)
    assert "(rounds 1.1-1.5)" in cell and cell.count("rounds") == 2
    assert ratio_cell(direct) == ""
    assert ratio_cell({"ratio_p50_vs_baseline": 1.2}) == "1.2x"


def test_cpu_rows_put_the_baseline_first_and_the_ratio_on_the_front() -> None:
    op = Op("op", call=lambda _c: asyncio.sleep(0))
    op.cpu = {
        "front": [{"coordinator_ms": 30.0, "client_ms": 1.0, "wall_s": 10.0}],
        "direct": [{"coordinator_ms": 20.0, "client_ms": 1.0, "wall_s": 5.0}],
    }
    # idle 0.1 CPU s/s over 100 calls: 10 ms/call net off the front, 5 ms off the direct block
    direct, front = cpu_rows(op, {"cpu_n": 100}, idle=[0.1])
    assert direct["metric"].endswith("direct [baseline]") and direct["p50"] == 15.0
    assert front["metric"].endswith("through the front") and front["p50"] == 20.0
    assert front["ratio_p50_vs_baseline"] == 1.333 and "ratio_p50_vs_baseline" not in direct
    assert front["parameters"]["front_cpu_ms_per_call_per_round"] == [5.0]


async def test_the_byte_pump_carries_both_ways_and_stops_with_connections_open(
    tmp_path: Path,
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    path = tmp_path / "s.sock"
    upstream = await asyncio.start_unix_server(echo, path=str(path))
    pump = await BytePump(path).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", pump.port)
        writer.write(b"hello")
        await writer.drain()
        assert await reader.readexactly(5) == b"HELLO"
        await pump.stop()  # with the connection still open: it is closed, not leaked
        assert await reader.read() == b""
        writer.close()
    finally:
        upstream.close()
        await upstream.wait_closed()
