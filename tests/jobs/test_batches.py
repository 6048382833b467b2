"""The Files and Batches APIs over a real server, the real model and the real openai client.

One server for the module, keys required (files and batches belong to a key). Batches are small
(a handful of lines, a few tokens each) so the module stays fast.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL, ServerHandle, start_server
from tests.guard import copy_home, make_key

CHAT = "/v1/chat/completions"


def chat_line(custom_id: str, text: str = "Say hi.", max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {**body, **extra}}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def wait_for(client: openai.OpenAI, batch_id: str, timeout: float = 240, until: tuple[str, ...] = ()) -> Any:
    """Poll batches.retrieve until the batch is finished (or in one of `until`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in (until or ("completed", "failed", "expired", "cancelled")):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def jobs_server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    base = tmp_path_factory.mktemp("jobs")
    home = copy_home(model_home, base / "home")
    handle = start_server(home, base, EMBER_AUTH="required", EMBER_MAX_FILE_BYTES="256KiB")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def keys(jobs_server: ServerHandle) -> dict[str, str]:
    return {name: make_key(jobs_server.home, name) for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def client(jobs_server: ServerHandle, keys: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=jobs_server.url("/v1"), api_key=keys["alice"], max_retries=0)


def run_batch(client: openai.OpenAI, lines: list[Any], endpoint: str = CHAT, **create: Any) -> Any:
    source = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h", **create)  # type: ignore[arg-type]
    assert batch.status == "validating" and batch.input_file_id == source.id
    return wait_for(client, batch.id)


def test_chat_batch_completes_each_line_once(client: openai.OpenAI) -> None:
    lines = [chat_line(f"req-{i}", f"Count to {i}.") for i in range(6)]
    lines.append({**chat_line("no-such-model"), "body": {**chat_line("x")["body"], "model": "no-such:model"}})
    batch = run_batch(client, lines, metadata={"job": "first"})
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (7, 6, 1)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.metadata == {"job": "first"}
    assert batch.usage is not None and batch.usage.output_tokens > 0 and batch.model == DEFAULT_MODEL
    output = read_lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(6)]
    for item in output:
        assert item["id"].startswith("batch_req_") and item["error"] is None
        response = item["response"]
        assert response["status_code"] == 200 and response["request_id"]
        completion = openai.types.chat.ChatCompletion.model_validate(response["body"])
        assert completion.object == "chat.completion" and completion.choices[0].message.role == "assistant"
        assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 4
    errors = read_lines(client, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["no-such-model"]
    assert errors[0]["response"]["status_code"] == 404 and errors[0]["error"]["code"] == "model_not_found"
    # The generated files are the caller's, listed with purpose batch_output.
    meta = client.files.retrieve(batch.output_file_id)
    assert meta.purpose == "batch_output" and meta.bytes > 0
    assert batch.id in [b.id for b in client.batches.list(limit=100)]


def test_embeddings_batch(client: openai.OpenAI) -> None:
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": DEFAULT_MODEL, "input": f"text number {i}"}}
        for i in range(4)
    ]
    batch = run_batch(client, lines, endpoint="/v1/embeddings")
    assert batch.status == "completed" and batch.request_counts.completed == 4
    output = read_lines(client, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == ["e0", "e1", "e2", "e3"]
    vectors = [o["response"]["body"]["data"][0]["embedding"] for o in output]
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 10
    assert batch.error_file_id is None


def test_completions_and_responses_batches(client: openai.OpenAI) -> None:
    completions = [{"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
                    "body": {"model": DEFAULT_MODEL, "prompt": f"Once upon a time {i}", "max_tokens": 3}}
                   for i in range(2)]
    batch = run_batch(client, completions, endpoint="/v1/completions")
    assert batch.status == "completed" and batch.request_counts.completed == 2
    bodies = [o["response"]["body"] for o in read_lines(client, batch.output_file_id)]
    assert all(b["object"] == "text_completion" and b["choices"][0]["text"] is not None for b in bodies)
    responses = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
                  "body": {"model": DEFAULT_MODEL, "input": "Say hi.", "max_output_tokens": 4}}
                 for i in range(2)]
    batch = run_batch(client, responses, endpoint="/v1/responses")
    assert batch.status == "completed" and batch.request_counts.completed == 2, batch
    bodies = [o["response"]["body"] for o in read_lines(client, batch.output_file_id)]
    assert all(b["object"] == "response" for b in bodies)


@pytest.mark.parametrize(
    ("bad", "code", "param"),
    [
        ('{"custom_id": "x", "method": "POST", ', "invalid_json_line", None),
        (chat_line("req-0"), "duplicate_custom_id", "custom_id"),
        ({**chat_line("other"), "url": "/v1/embeddings"}, "invalid_url", "url"),
        ({k: v for k, v in chat_line("nobody").items() if k != "custom_id"}, "missing_required_parameter", "custom_id"),
        (chat_line("streamed", stream=True), "unsupported_parameter", "body.stream"),
    ],
)
def test_bad_input_file_fails_the_batch_naming_the_line(client: openai.OpenAI, bad: Any, code: str, param: str) -> None:
    batch = run_batch(client, [chat_line("req-0"), chat_line("req-1"), bad])
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.data
    error = batch.errors.data[0]
    assert (error.code, error.line, error.param) == (code, 3, param), error


def test_size_limits_of_a_batch(jobs_server: ServerHandle, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", b"x" * (300 * 1024)), purpose="batch")
    assert caught.value.status_code == 413 and "limit" in caught.value.message
    # Nothing half-written: no file record, no bytes left behind.
    assert all(f.filename != "big.jsonl" for f in client.files.list())
    assert not list((jobs_server.home / "state" / "files").glob(".partial-*"))


def test_bad_requests_are_openai_errors(jobs_server: ServerHandle, client: openai.OpenAI, keys: dict[str, str]) -> None:
    data = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    assert data.purpose == "user_data" and data.bytes == 5 and data.object == "file"
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=data.id, endpoint=CHAT, completion_window="24h")
    assert "purpose" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    source = client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=source.id, endpoint="/v1/images/generations", completion_window="24h")  # type: ignore[arg-type]
    assert caught.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="forever")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}"), purpose="homework")  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    broken = httpx.post(jobs_server.url("/v1/files"), headers={**headers, "content-type": "multipart/form-data; boundary=zz"},
                        content=b"--zz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--zz\r\nbroken")
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    as_json = httpx.post(jobs_server.url("/v1/files"), headers=headers, json={"purpose": "batch"})
    assert as_json.status_code == 400 and "multipart" in as_json.json()["error"]["message"]
    missing = httpx.post(jobs_server.url("/v1/files"), headers=headers, data={"purpose": "batch"},
                         files={"other": ("a", b"b")})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    lasting = client.files.create(file=("e.txt", b"x"), purpose="user_data",
                                  expires_after={"anchor": "created_at", "seconds": 3600})
    assert lasting.expires_at == lasting.created_at + 3600
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("e.txt", b"x"), purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 5})
    assert "expires_after" in caught.value.message
    # Deleting is for good; a deleted file is unknown.
    assert client.files.delete(data.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(data.id)


def test_files_and_batches_belong_to_their_key(jobs_server: ServerHandle, client: openai.OpenAI,
                                               keys: dict[str, str]) -> None:
    source = client.files.create(file=("mine.jsonl", jsonl([chat_line("a")])), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    bob = openai.OpenAI(base_url=jobs_server.url("/v1"), api_key=keys["bob"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(source.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.delete(source.id)
    with pytest.raises(openai.NotFoundError):  # nor may bob start a batch on alice's file
        bob.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    assert source.id not in [f.id for f in bob.files.list()] and batch.id not in [b.id for b in bob.batches.list()]
    anonymous = httpx.get(jobs_server.url("/v1/batches"))
    assert anonymous.status_code == 401
    assert wait_for(client, batch.id).status == "completed"


def test_lists_page_as_the_sdk_expects(client: openai.OpenAI) -> None:
    made = [client.files.create(file=(f"p{i}.txt", b"x"), purpose="user_data").id for i in range(3)]
    page = client.files.list(purpose="user_data", limit=2)
    assert [f.id for f in page.data] == made[::-1][:2] and page.has_more
    everything = [f.id for f in client.files.list(purpose="user_data", limit=1)]  # auto-paginates
    assert everything[:3] == made[::-1]
    ascending = [f.id for f in client.files.list(purpose="user_data", order="asc")]
    assert ascending[-3:] == made
    source = client.files.create(file=("bad.jsonl", b"not json\n"), purpose="batch")
    batches = [client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h").id
               for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == batches[::-1][:2] and first.has_more
    listed = [b.id for b in client.batches.list(limit=1)]  # page by page, after= the last id
    assert listed[:3] == batches[::-1] and len(listed) == len(set(listed))


def test_cancel_keeps_what_finished(client: openai.OpenAI) -> None:
    lines = [chat_line(f"c{i}", "Tell me a long story about the sea.", max_tokens=16) for i in range(16)]
    source = client.files.create(file=("cancel.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 120
    while (client.batches.retrieve(batch.id).request_counts.completed or 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    output = read_lines(client, done.output_file_id)
    ids = [o["custom_id"] for o in output]
    assert len(ids) == len(set(ids)) >= 1 and len(ids) < 16
    assert done.request_counts.completed == len(ids)
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: the same answer
    finished = run_batch(client, [chat_line("one")])
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.cancel(finished.id)
    assert "completed" in caught.value.message


def test_cancel_right_after_create(client: openai.OpenAI) -> None:
    """Cancelled while validating, while its file is read, or just after: cancelled, little or nothing run."""
    lines = [chat_line(f"v{i}") for i in range(1000)]
    source = client.files.create(file=("many.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    ids = [o["custom_id"] for o in read_lines(client, done.output_file_id)]
    assert len(ids) == len(set(ids)) == done.request_counts.completed < 100


def test_expired_lines_go_to_the_error_file(client: openai.OpenAI) -> None:
    lines = [chat_line(f"x{i}", "Tell me a long story about the sea.", max_tokens=32) for i in range(16)]
    source = client.files.create(file=("expire.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="1s")  # type: ignore[arg-type]
    done = wait_for(client, batch.id)
    assert done.status == "expired" and done.expired_at
    answered = [o["custom_id"] for o in read_lines(client, done.output_file_id)]
    expired = read_lines(client, done.error_file_id)
    assert expired and all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in expired)
    assert sorted(answered + [e["custom_id"] for e in expired]) == sorted(f"x{i}" for i in range(16))


def test_a_spent_budget_fails_the_rest_with_insufficient_quota(jobs_server: ServerHandle) -> None:
    key = make_key(jobs_server.home, "thrifty", budget_tokens=60, budget_period="day")
    thrifty = openai.OpenAI(base_url=jobs_server.url("/v1"), api_key=key, max_retries=0)
    lines = [chat_line(f"b{i}", "Write a poem.", max_tokens=8) for i in range(10)]
    start = time.monotonic()
    batch = run_batch(thrifty, lines)
    assert batch.status == "completed" and time.monotonic() - start < 120
    errors = read_lines(thrifty, batch.error_file_id)
    assert errors and all(e["error"]["code"] == "insufficient_quota" for e in errors)
    assert errors[0]["response"]["status_code"] == 429
    assert batch.request_counts.completed + batch.request_counts.failed == 10
    assert batch.request_counts.completed >= 1


def test_lines_run_as_the_batch_key_scopes_usage_and_audit(jobs_server: ServerHandle) -> None:
    # An embed-only key may run a batch, but its chat lines meet the guard as that key: 403.
    key = make_key(jobs_server.home, "embedder", scopes="embed")
    embedder = openai.OpenAI(base_url=jobs_server.url("/v1"), api_key=key, max_retries=0)
    batch = run_batch(embedder, [chat_line("chat-0"), chat_line("chat-1")])
    errors = read_lines(embedder, batch.error_file_id)
    assert batch.status == "completed" and batch.request_counts.failed == 2
    assert {(e["response"]["status_code"], e["error"]["code"]) for e in errors} == {(403, "insufficient_scope")}
    # Answered lines are the key's usage, like any request of it.
    admin = make_key(jobs_server.home, "operator", scopes="admin")
    counter = make_key(jobs_server.home, "counter")
    counting = openai.OpenAI(base_url=jobs_server.url("/v1"), api_key=counter, max_retries=0)
    assert run_batch(counting, [chat_line("u0"), chat_line("u1"), chat_line("u2")]).request_counts.completed == 3
    rows = httpx.get(jobs_server.url("/admin/usage"), params={"by": "key"},
                     headers={"Authorization": f"Bearer {admin}"}).json()["rows"]
    mine = next(r for r in rows if r["key"] == "counter")
    assert mine["requests"] == 3 and mine["tokens_out"] > 0
    # And each is in the audit log under that key (written in batches: give it a moment).
    from ember.guard.audit import open_readonly, rows as audit_rows

    deadline = time.monotonic() + 10
    while True:
        db = open_readonly(jobs_server.home / "state" / "audit.db")
        try:
            audited = [json.loads(r.data) for r in audit_rows(db)]
        finally:
            db.close()
        if sum(1 for a in audited if a.get("key") == "counter") >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(1 for a in audited if a.get("key") == "counter" and a.get("endpoint") == CHAT) == 3


def test_a_revoked_key_stops_its_batch(jobs_server: ServerHandle) -> None:
    from ember.guard.keys import KeyStore

    key = make_key(jobs_server.home, "fickle")
    fickle = openai.OpenAI(base_url=jobs_server.url("/v1"), api_key=key, max_retries=0)
    lines = [chat_line(f"f{i}", "Tell me a long story about the sea.", max_tokens=24) for i in range(32)]
    source = fickle.files.create(file=("f.jsonl", jsonl(lines)), purpose="batch")
    batch = fickle.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 120
    while (fickle.batches.retrieve(batch.id).request_counts.completed or 0) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store = KeyStore(jobs_server.home / "state" / "keys.db")
    try:
        store.revoke("fickle")
    finally:
        store.close()
    # The key can no longer look; the lines after the revocation failed as that key's requests do.
    with pytest.raises(openai.AuthenticationError):
        fickle.batches.retrieve(batch.id)
    from ember.jobs.store import JobStore

    jobs = JobStore(jobs_server.home / "state" / "jobs.db")
    try:
        deadline = time.monotonic() + 120
        while not (record := jobs.get_batch(batch.id, "fickle")).finished:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        jobs.close()
    assert record.status == "completed" and record.completed >= 1 and record.failed >= 1
    assert record.completed + record.failed == 32
    failed = (jobs_server.home / "state" / "files" / str(record.error_file_id)).read_text().splitlines()
    assert {json.loads(x)["error"]["code"] for x in failed} == {"invalid_api_key"}


@pytest.mark.slow
def test_kill_9_mid_batch_resumes_without_loss_or_duplicates(model_home: Path, tmp_path: Path) -> None:
    home = copy_home(model_home, tmp_path / "home")
    server = start_server(home, tmp_path)
    lines = [chat_line(f"k{i}", "Tell me about rivers.", max_tokens=8) for i in range(12)]
    try:
        client = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)
        source = client.files.create(file=("kill.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
        deadline = time.monotonic() + 120
        while (client.batches.retrieve(batch.id).request_counts.completed or 0) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)  # this test's own server, by its pid
        server.process.wait()
    finally:
        server.stop()
    again = start_server(home, tmp_path)
    try:
        client = openai.OpenAI(base_url=again.url("/v1"), api_key="none", max_retries=0)
        done = wait_for(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 12
        ids = [o["custom_id"] for o in read_lines(client, done.output_file_id)]
        assert ids == [f"k{i}" for i in range(12)]  # each once, in input order
        assert done.error_file_id is None
    finally:
        again.stop()
