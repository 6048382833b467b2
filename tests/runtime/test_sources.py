"""URL and Hugging Face pulls against a real HTTP server on 127.0.0.1: resume, checksums, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ember
from ember.errors import BadRequest, ModelNotFound, PullFailed
from ember.runtime.store import ModelRecord, ModelRef, ModelStore, PullProgress

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def served(smol: ModelRecord, smol_sha256: str, new_file_server):
    """The real GGUF at full speed; tests that turn the server's knobs use their own `file_server`."""
    server = new_file_server()
    server.serve(f"/models/{SMOL_FILE}", smol.path, etag=f'"{smol_sha256}"')
    return server


@pytest.fixture(scope="module")
def url_pull(tmp_path_factory: pytest.TempPathFactory, served) -> tuple[ModelStore, ModelRecord, list]:
    """One plain URL pull into a store that later tests of this module reuse."""
    store = ModelStore(tmp_path_factory.mktemp("url-home"))
    seen: list[PullProgress] = []
    started = time.monotonic()
    record = store.pull(served.url(f"/models/{SMOL_FILE}"), progress=seen.append)
    seen.append(PullProgress("elapsed", completed=int((time.monotonic() - started) * 1000)))
    return store, record, seen


def _leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in (store.home / "blobs" / "partial").iterdir() if not p.name.endswith(".lock"))


def test_plain_url_pull(url_pull, smol: ModelRecord, served, sha256_of) -> None:
    store, record, seen = url_pull
    assert record.ref == ModelRef("smollm2-135m-instruct.q4_1", "latest")
    assert record.digest == smol.digest
    assert sha256_of(record.path) == smol.digest.removeprefix("sha256:")
    assert record.metadata.architecture == "llama"
    assert record.source == served.url(f"/models/{SMOL_FILE}")
    assert store.get("smollm2-135m-instruct.q4_1") == record
    assert _leftovers(store) == []

    statuses = [p.status for p in seen]
    assert statuses[0] == "pulling manifest"
    assert statuses[-4:] == ["verifying sha256 digest", "writing manifest", "success", "elapsed"]
    byte_events = [p for p in seen if p.status == f"pulling {SMOL_FILE}"]
    assert byte_events[-1].completed == byte_events[-1].total == record.size
    elapsed_s = seen[-1].completed / 1000
    assert len(byte_events) <= 10 * elapsed_s + 3  # throttled to about ten a second


def test_sha256_fragment_mismatch_stores_nothing(tmp_path: Path, served) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(PullFailed, match="sha256 mismatch"):
        store.pull(served.url(f"/models/{SMOL_FILE}") + "#sha256=" + "0" * 64)
    assert store.list() == []
    assert list((tmp_path / "home" / "blobs").glob("sha256-*")) == []
    assert list((tmp_path / "home" / "manifests").iterdir()) == []
    assert _leftovers(store) == []  # bad bytes are not kept for a resume


def test_bad_fragment_and_http_errors(tmp_path: Path, served) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(BadRequest, match="fragment"):
        store.pull(served.url("/models/x.gguf#md5=abc"))
    with pytest.raises(PullFailed, match="HTTP 404"):
        store.pull(served.url("/missing.gguf"))
    assert store.list() == []


def test_dropped_connection_resumes_with_range(
    url_pull, file_server, smol: ModelRecord, smol_sha256: str
) -> None:
    store, _, _ = url_pull
    url = file_server.serve("/flaky/smol.gguf", smol.path, etag=f'"{smol_sha256}"')
    file_server.drop_after = 10 * 1024 * 1024
    file_server.drops = 1
    record = store.pull(url, name="flaky")
    assert record.digest == smol.digest and record.size == smol.size
    assert file_server.ranges() == [f"bytes={10 * 1024 * 1024}-"]
    assert file_server.requests[-1].if_range == f'"{smol_sha256}"'
    assert _leftovers(store) == []


def test_server_without_range_support_restarts(tmp_path: Path, file_server, make_gguf, sha256_of) -> None:
    model = make_gguf(name="norange", rows=400_000)  # about 13 MB
    url = file_server.serve("/norange.gguf", model, etag='"n1"')
    file_server.honour_ranges = False
    file_server.drop_after = 1024 * 1024
    file_server.drops = 1
    record = ModelStore(tmp_path / "home").pull(url)
    assert record.digest == f"sha256:{sha256_of(model)}"
    assert file_server.ranges() == ["bytes=1048576-"]  # asked to resume, got the whole file, started over


def test_changed_file_is_not_spliced_onto_old_bytes(tmp_path: Path, file_server, make_gguf, sha256_of) -> None:
    old = make_gguf(name="changing", seed=1, rows=400_000)
    new = make_gguf(name="changing", seed=2, rows=400_000)
    url = file_server.serve("/changing.gguf", old, etag='"v1"')
    file_server.rate = 20 * 1024 * 1024
    cancel = threading.Event()
    store = ModelStore(tmp_path / "home")
    with pytest.raises(PullFailed, match="cancelled"):  # leaves a partial file of the old version
        store.pull(url, cancel=cancel, progress=lambda p: p.completed and p.completed > 2**20 and cancel.set())
    assert len(list((store.home / "blobs" / "partial").glob("*.partial"))) == 1
    file_server.rate = None

    file_server.serve("/changing.gguf", new, etag='"v2"')  # the file changed upstream
    record = store.pull(url)
    assert file_server.requests[-1].range is not None and file_server.requests[-1].if_range == '"v1"'
    # the resume was conditional on the old ETag, so the server sent the new file whole
    assert record.digest == f"sha256:{sha256_of(new)}"


def test_cancel_stops_promptly_and_keeps_partial(url_pull, file_server, smol: ModelRecord) -> None:
    store, _, _ = url_pull
    url = file_server.serve("/slow/smol.gguf", smol.path, etag='"v1"')
    file_server.rate = 20 * 1024 * 1024
    cancel = threading.Event()

    def progress(p: PullProgress) -> None:
        if p.completed and p.total and p.completed > 2 * 1024 * 1024:
            cancel.set()

    started = time.monotonic()
    with pytest.raises(PullFailed, match="pull cancelled"):
        store.pull(url, name="cancelled", progress=progress, cancel=cancel)
    assert time.monotonic() - started < 5
    partials = list((store.home / "blobs" / "partial").glob("*.partial"))
    assert len(partials) == 1 and partials[0].stat().st_size > 2 * 1024 * 1024
    with pytest.raises(ModelNotFound):
        store.get("cancelled")


def test_hf_source(tmp_path: Path, file_server, smol: ModelRecord, smol_sha256: str, make_gguf,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Like huggingface.co: /resolve/ answers 302 with X-Linked-ETag (the LFS sha256) to a CDN URL.
    repo_file = "/owner/Repo-GGUF/resolve/main/SmolLM2-135M-Instruct-Q4_1.gguf"
    file_server.redirect(repo_file, "/cdn/blob1", **_linked(smol_sha256, smol.size))
    file_server.serve("/cdn/blob1", smol.path, etag=f'"{smol_sha256}"')
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    store = ModelStore(tmp_path / "home", hf_endpoint=file_server.url(""))

    seen: list[PullProgress] = []
    record = store.pull("hf://owner/Repo-GGUF/SmolLM2-135M-Instruct-Q4_1.gguf", progress=seen.append)
    assert record.ref == ModelRef("hf.co/owner/repo-gguf", "smollm2-135m-instruct-q4_1")
    assert record.digest == smol.digest and record.source.startswith("hf://owner/Repo-GGUF/")
    assert file_server.requests[0].path == repo_file
    assert file_server.requests[0].authorization == "Bearer hf_secret"
    # the digest was known from X-Linked-ETag before the body came, so progress names it
    assert any(p.status == f"pulling {smol_sha256[:12]}" and p.digest == smol.digest for p in seen)

    # A revision, and a linked sha256 that the bytes do not match: the pull fails, nothing is stored.
    bad_file = "/owner/Repo-GGUF/resolve/v1.0/tiny.gguf"
    tiny = make_gguf(name="tiny")
    file_server.serve("/cdn/blob2", tiny)
    file_server.redirect(bad_file, "/cdn/blob2", **_linked("f" * 64, tiny.stat().st_size))
    with pytest.raises(PullFailed, match="sha256 mismatch"):
        store.pull("hf://owner/Repo-GGUF/tiny.gguf@v1.0", name="bad")
    assert file_server.requests[-2].path == bad_file
    assert [str(r.ref) for r in store.list()] == [str(record.ref)]

    # The same file again under another name: the linked digest is stored already, so no body is read.
    seen.clear()
    again = store.pull("hf://owner/Repo-GGUF/SmolLM2-135M-Instruct-Q4_1.gguf", name="second", progress=seen.append)
    assert again.digest == record.digest
    assert not any(p.completed for p in seen if p.status.startswith("pulling "))


def _linked(sha256: str, size: int) -> dict[str, str]:
    return {"X-Linked-ETag": f'"{sha256}"', "X-Linked-Size": str(size)}


def test_concurrent_pulls_of_one_url(tmp_path: Path, file_server, make_gguf, sha256_of) -> None:
    path = make_gguf(name="big", rows=600_000)  # about 19 MB
    url = file_server.serve("/big.gguf", path, etag='"big"')
    file_server.rate = 40 * 1024 * 1024
    store = ModelStore(tmp_path / "home")
    results: dict[str, ModelRecord | BaseException] = {}

    def pull(name: str) -> None:
        try:
            results[name] = store.pull(url, name="big")
        except BaseException as exc:  # reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=pull, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, ModelRecord) for r in results.values()), results
    assert {r.digest for r in results.values()} == {f"sha256:{sha256_of(path)}"}  # type: ignore[union-attr]
    assert len(list((tmp_path / "home" / "blobs").glob("sha256-*"))) == 1
    assert _leftovers(store) == []


_PULL_SCRIPT = "import sys; from pathlib import Path; from ember.runtime.store import ModelStore; " \
               "ModelStore(Path(sys.argv[1])).pull(sys.argv[2])"


def test_kill_9_mid_pull_then_resume(tmp_path: Path, file_server, make_gguf, sha256_of, wait_for) -> None:
    # A real GGUF of 48 MB whose metadata parses in milliseconds (smollm2's vocabulary takes seconds).
    model = make_gguf(name="killed", rows=1_500_000)
    url = file_server.serve("/throttled/killed.gguf", model, etag='"k1"')
    file_server.rate = 8 * 1024 * 1024  # 6 s for the whole file: plenty of time to kill the pull
    home = tmp_path / "home"
    partial_dir = home / "blobs" / "partial"
    src = str(Path(ember.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _PULL_SCRIPT, str(home), url], env=env)
    try:
        def partial_size() -> int:
            return sum(p.stat().st_size for p in partial_dir.glob("*.partial")) if partial_dir.exists() else 0

        wait_for(lambda: partial_size() > 3 * 1024 * 1024 or proc.poll() is not None, 30, "partial bytes")
        assert proc.poll() is None, "the pull ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    assert [p for p in (home / "manifests").rglob("*") if p.is_file()] == []
    assert list((home / "blobs").glob("sha256-*")) == []
    partials = list(partial_dir.glob("*.partial"))
    assert len(partials) == 1
    kept = partials[0].stat().st_size
    assert 0 < kept < model.stat().st_size

    file_server.rate = None
    record = ModelStore(home).pull(url)
    assert file_server.ranges() == [f"bytes={kept}-"]
    assert file_server.requests[-1].if_range == '"k1"'
    assert record.digest == f"sha256:{sha256_of(model)}"
    assert sha256_of(record.path) == sha256_of(model)
    assert record.metadata.name == "killed"
    assert not list(partial_dir.glob("*.partial"))
