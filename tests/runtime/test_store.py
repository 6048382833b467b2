"""The store: names, import, list, get, copy, remove with blob collection, verify."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import timezone
from pathlib import Path

import pytest

from ember.errors import BadRequest, Conflict, InvalidModelName, ModelLoadFailed, ModelNotFound
from ember.runtime.formats import ModelMetadata, read_gguf_metadata
from ember.runtime.store import MEDIA_TYPE_GGUF, ModelRef, ModelStore


@pytest.mark.parametrize(
    ("text", "name", "tag"),
    [
        ("smollm2:135m", "smollm2", "135m"),
        ("smollm2", "smollm2", "latest"),
        ("  SmolLM2:135M ", "smollm2", "135m"),
        ("hf.co/owner/repo:q4_k_m", "hf.co/owner/repo", "q4_k_m"),
        ("library/gemma3:270m-it_v1.0", "library/gemma3", "270m-it_v1.0"),
        ("a", "a", "latest"),
    ],
)
def test_model_ref_parse(text: str, name: str, tag: str) -> None:
    ref = ModelRef.parse(text)
    assert (ref.name, ref.tag) == (name, tag)
    assert str(ref) == f"{name}:{tag}"
    assert ModelRef.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    ["", "   ", "foo:", ":tag", "foo:..", "foo:.hidden", "../etc:passwd", "a//b", "/abs", "foo bar",
     "foo:bad tag", "foo:" + "x" * 129, "-foo", "foo/", "a/../b", "naïve"],
)
def test_model_ref_rejects(text: str) -> None:
    with pytest.raises(InvalidModelName):
        ModelRef.parse(text)


def test_import_list_get(tmp_path: Path, make_gguf, sha256_of) -> None:
    home = tmp_path / "home"
    store = ModelStore(home)
    source = make_gguf(name="mine", context_length=1024)
    record = store.import_file(source, "mine/smol:q4")
    assert record.ref == ModelRef("mine/smol", "q4")
    assert record.digest == f"sha256:{sha256_of(source)}"
    assert record.size == source.stat().st_size
    assert record.path == home / "blobs" / f"sha256-{sha256_of(source)}"
    assert record.path.read_bytes() == source.read_bytes()
    assert record.format == "gguf" and record.metadata == read_gguf_metadata(source)
    assert record.metadata.context_length == 1024
    assert record.source == str(source.resolve())
    assert record.modified_at.tzinfo is not None and record.modified_at.utcoffset() == timezone.utc.utcoffset(None)

    manifest_path = home / "manifests" / "mine" / "smol" / "q4"
    manifest = json.loads(manifest_path.read_bytes())
    assert manifest["layers"] == [{"mediaType": MEDIA_TYPE_GGUF, "digest": record.digest, "size": record.size}]
    assert manifest["name"] == "mine/smol" and manifest["tag"] == "q4" and manifest["format"] == "gguf"
    assert ModelMetadata.from_dict(manifest["metadata"]) == record.metadata
    assert record.manifest_digest == hashlib.sha256(manifest_path.read_bytes()).hexdigest()

    assert store.get("mine/smol:q4") == record
    assert store.get(ModelRef("mine/smol", "q4")) == record
    assert [r.ref for r in store.list()] == [record.ref]
    assert not any((home / "blobs" / "partial").glob("*.tmp"))  # no temp files left
    with pytest.raises(ModelNotFound) as excinfo:
        store.get("mine/smol")  # :latest was never stored
    assert excinfo.value.model == "mine/smol:latest"


def test_copy_remove_and_blob_collection(tmp_path: Path, make_gguf) -> None:
    store = ModelStore(tmp_path / "home")
    first = store.import_file(make_gguf(seed=1), "alpha")
    second = store.import_file(make_gguf(seed=2), "beta:v1")
    assert first.digest != second.digest
    copied = store.copy("alpha", "team/alpha-copy:stable")
    assert copied.digest == first.digest and copied.path == first.path
    assert [str(r.ref) for r in store.list()] == ["alpha:latest", "beta:v1", "team/alpha-copy:stable"]

    store.remove("alpha")  # the copy still points at the blob: it stays
    assert first.path.is_file()
    store.remove("team/alpha-copy:stable")  # last reference: the blob goes
    assert not first.path.exists()
    assert not (tmp_path / "home" / "manifests" / "team").exists()  # empty folders pruned
    assert second.path.is_file()
    assert [str(r.ref) for r in store.list()] == ["beta:v1"]

    with pytest.raises(ModelNotFound):
        store.remove("alpha")
    with pytest.raises(ModelNotFound):
        store.copy("nope", "other")


def test_copy_over_existing_name_collects_old_blob(tmp_path: Path, make_gguf) -> None:
    store = ModelStore(tmp_path / "home")
    old = store.import_file(make_gguf(seed=1), "target")
    new = store.import_file(make_gguf(seed=2), "source")
    store.copy("source", "target")
    assert store.get("target").digest == new.digest
    assert not old.path.exists()


def test_import_same_file_twice_shares_blob(tmp_path: Path, make_gguf) -> None:
    store = ModelStore(tmp_path / "home")
    path = make_gguf(seed=3)
    a = store.import_file(path, "a")
    b = store.import_file(path, "b")
    assert a.path == b.path
    assert len(list((tmp_path / "home" / "blobs").glob("sha256-*"))) == 1


def test_import_missing_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(BadRequest, match="no such file"):
        store.import_file(tmp_path / "nope.gguf", "nope")
    with pytest.raises(InvalidModelName):
        store.import_file(tmp_path / "nope.gguf", "Bad Name")


def test_verify_detects_truncated_and_missing_blobs(tmp_path: Path, make_gguf) -> None:
    store = ModelStore(tmp_path / "home")
    record = store.import_file(make_gguf(seed=4), "fragile")
    assert store.verify("fragile") == record
    with open(record.path, "r+b") as f:
        f.truncate(record.size // 2)
    with pytest.raises(ModelLoadFailed, match="corrupt or truncated") as excinfo:
        store.verify("fragile")
    assert "pull it again" in excinfo.value.message
    os.remove(record.path)
    with pytest.raises(ModelLoadFailed, match="missing"):
        store.verify("fragile")
    with pytest.raises(ModelNotFound):
        store.verify("absent")


def test_corrupt_manifest_is_skipped_by_list_and_removable(tmp_path: Path, make_gguf) -> None:
    home = tmp_path / "home"
    store = ModelStore(home)
    store.import_file(make_gguf(seed=5), "good")
    (home / "manifests" / "broken").mkdir()
    (home / "manifests" / "broken" / "latest").write_text("{not json")
    assert [str(r.ref) for r in store.list()] == ["good:latest"]
    with pytest.raises(ModelLoadFailed, match="unreadable manifest"):
        store.get("broken")
    store.remove("broken")
    assert [str(r.ref) for r in store.list()] == ["good:latest"]


def test_name_that_clashes_with_a_folder(tmp_path: Path, make_gguf) -> None:
    store = ModelStore(tmp_path / "home")
    store.import_file(make_gguf(seed=6), "a/b")  # manifests/a/b/ is a folder
    with pytest.raises(Conflict):
        store.import_file(make_gguf(seed=7), "a:b")  # would be the file manifests/a/b
    assert [str(r.ref) for r in store.list()] == ["a/b:latest"]


def test_pull_local_path(tmp_path: Path, make_gguf) -> None:
    store = ModelStore(tmp_path / "home")
    path = make_gguf(name="Local-Model", seed=8)
    seen = []
    record = store.pull(str(path), progress=seen.append)
    assert record.ref == ModelRef("local-model-8")
    assert seen[-1].status == "success"
    assert store.pull(f"file://{path}", name="other:tag").digest == record.digest
