"""Batch lines through a gateway route to a fake upstream that fails on demand: retried with
backoff until it answers, or failed with the last answer once the attempts are spent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle, start_upstream, write_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, UpstreamHandle]]:
    logs = tmp_path_factory.mktemp("batch-retries")
    fake = start_upstream(logs)
    # The breaker stays shut: these tests are about the batch's own retries, not the gateway's.
    config = write_config(logs, f"""
[breaker]
failures = 100

[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.v1}"

[[routes]]
model = "chat"
targets = ["fake/gpt-test"]
""")
    home = logs / "home"
    home.mkdir()
    server = start_server(home, logs, EMBER_CONFIG=str(config), EMBER_BATCH_MAX_ATTEMPTS="3")
    try:
        yield server, fake
    finally:
        server.stop()
        fake.stop()


def run(server: ServerHandle, count: int) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}}
             for i in range(count)]
    source = client.files.create(file=("r.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)

    def read(file_id: str | None) -> list[dict[str, Any]]:
        return [json.loads(x) for x in client.files.content(file_id).text.splitlines()] if file_id else []

    return batch, read(batch.output_file_id), read(batch.error_file_id)


def test_a_failing_upstream_is_retried_until_it_answers(setup: tuple[ServerHandle, UpstreamHandle]) -> None:
    server, fake = setup
    fake.reset()
    fake.control(mode="error", status=503, times=2)
    batch, output, errors = run(server, 2)
    assert batch.status == "completed" and not errors
    assert sorted(o["custom_id"] for o in output) == ["r0", "r1"]
    assert all(o["response"]["body"]["choices"][0]["message"]["content"] == "tok0 tok1 tok2 " for o in output)
    assert fake.stats()["requests"] >= 4  # two failures, then each line once


def test_a_client_error_is_not_retried(setup: tuple[ServerHandle, UpstreamHandle]) -> None:
    server, fake = setup
    fake.reset()
    fake.control(mode="error", status=400, times=1)
    batch, output, errors = run(server, 1)
    assert [e["custom_id"] for e in errors] == ["r0"] and errors[0]["response"]["status_code"] == 400
    assert fake.stats()["requests"] == 1


def test_attempts_spent_the_line_fails_with_its_last_answer(setup: tuple[ServerHandle, UpstreamHandle]) -> None:
    server, fake = setup
    fake.reset()
    fake.control(mode="error", status=500)
    started = time.monotonic()
    batch, output, errors = run(server, 2)
    fake.reset()
    assert batch.status == "completed" and not output and batch.request_counts.failed == 2
    assert sorted(e["custom_id"] for e in errors) == ["r0", "r1"]
    for error in errors:
        assert error["response"]["status_code"] >= 500 and error["error"]["message"]
    assert time.monotonic() - started > 1.0  # backoff 0.5 s, then 1 s, between the three attempts
