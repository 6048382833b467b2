"""The provider path's body framing over raw byte chunks, however the network splits them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ember.gateway.remote import ndjson_lines, sse_data


def _split(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


async def _body(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _collect(reader: object, chunks: list[bytes]) -> list[str]:
    async def run() -> list[str]:
        return [item async for item in reader(_body(chunks))]  # type: ignore[operator]

    return asyncio.run(run())


def test_sse_events_come_whole_at_every_split() -> None:
    raw = b': keep-alive\n\ndata: {"a": 1}\n\nevent: x\ndata: line1\ndata: line2\n\r\ndata:{"b":2}\r\n\r\ndata: [DONE]'
    expected = ['{"a": 1}', "line1\nline2", '{"b":2}', "[DONE]"]
    for size in (1, 2, 3, 7, len(raw)):
        assert _collect(sse_data, _split(raw, size)) == expected, size


def test_ndjson_lines_come_whole_at_every_split() -> None:
    raw = b'{"a": 1}\n\n{"b": "x\\ny"}\r\n  \n{"done": true}'
    for size in (1, 2, 5, len(raw)):
        lines = _collect(ndjson_lines, _split(raw, size))
        assert [line.strip() for line in lines] == ['{"a": 1}', '{"b": "x\\ny"}', '{"done": true}'], size
