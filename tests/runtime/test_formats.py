"""Format sniffing and GGUF metadata, on real files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from ember.errors import NotAModelFile, UnsupportedModelFormat
from ember.runtime.formats import (
    ModelMetadata,
    check_model_file,
    human_count,
    read_gguf_metadata,
    sniff_format,
)
from ember.runtime.store import ModelRecord, ModelStore


def _safetensors(path: Path) -> Path:
    """A real (tiny) safetensors file: u64 LE header length, JSON header, raw tensor bytes."""
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = json.dumps(
        {"weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, len(data)]}, "__metadata__": {"format": "pt"}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _onnx_like(path: Path) -> Path:
    # ModelProto: ir_version=8 (field 1 varint), producer_name="pytorch" (field 2), then opaque bytes.
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.1.0" + os.urandom(64))
    return path


def test_sniff_formats(tmp_path: Path, make_gguf) -> None:
    assert sniff_format(make_gguf()) == "gguf"
    assert sniff_format(_safetensors(tmp_path / "model.safetensors")) == "safetensors"
    assert sniff_format(_onnx_like(tmp_path / "model.onnx")) == "onnx"
    (tmp_path / "noise.bin").write_bytes(os.urandom(4096))
    assert sniff_format(tmp_path / "noise.bin") == "unknown"
    (tmp_path / "empty").write_bytes(b"")
    assert sniff_format(tmp_path / "empty") == "unknown"
    (tmp_path / "notes.txt").write_text("hello, not a model\n")
    assert sniff_format(tmp_path / "notes.txt") == "unknown"


def test_smollm2_metadata(smol: ModelRecord) -> None:
    meta = smol.metadata
    assert meta.architecture == "llama"
    assert meta.quantization == "Q4_1"
    assert meta.context_length == 8192
    assert meta.embedding_length == 576
    assert meta.chat_template is not None and "im_start" in meta.chat_template
    assert meta.parameter_size() == "135M"
    assert meta.bos_token == "<|im_start|>" and meta.eos_token == "<|im_end|>"
    assert meta.gguf_info() == {
        "general.architecture": "llama",
        "general.parameter_count": meta.parameter_count,
        "llama.context_length": 8192,
        "llama.embedding_length": 576,
    }
    assert ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta


def test_tiny_gguf_metadata(make_gguf) -> None:
    meta = read_gguf_metadata(make_gguf(name="tiny", context_length=512))
    assert (meta.architecture, meta.context_length, meta.quantization) == ("llama", 512, "F32")
    assert meta.parameter_count == 24  # no general.parameter_count: the tensors' elements are summed
    assert (meta.bos_token, meta.eos_token, meta.name) == ("<s>", "</s>", "tiny")


@pytest.mark.parametrize("keep", [5_000_000, 100_000, 16, 3])
def test_truncated_gguf_is_not_a_model(smol: ModelRecord, tmp_path: Path, keep: int) -> None:
    truncated = tmp_path / "cut.gguf"
    with open(smol.path, "rb") as f:
        truncated.write_bytes(f.read(keep))
    with pytest.raises(NotAModelFile) as excinfo:
        check_model_file(truncated)
    if keep >= 4:  # with the magic intact it is a damaged GGUF, not some other file
        assert "truncated or corrupt" in excinfo.value.message
    else:
        assert "not a model file" in excinfo.value.message
    if keep < 1_000_000:  # a 5 MB prefix takes seconds to parse up to the missing bytes: once is enough
        with pytest.raises(NotAModelFile):
            read_gguf_metadata(truncated)


def test_tiny_gguf_missing_tensor_bytes(make_gguf, tmp_path: Path) -> None:
    path = make_gguf()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(NotAModelFile, match="truncated or corrupt"):
        check_model_file(cut)


def test_check_rejects_other_formats_clearly(tmp_path: Path, make_gguf) -> None:
    check_model_file(make_gguf())  # a good one passes
    with pytest.raises(UnsupportedModelFormat, match="safetensors models are not supported yet"):
        check_model_file(_safetensors(tmp_path / "m.safetensors"))
    with pytest.raises(UnsupportedModelFormat, match="ONNX models are not supported yet"):
        check_model_file(_onnx_like(tmp_path / "m.onnx"))
    text = tmp_path / "readme.txt"
    text.write_text("# just text\n" * 100)
    with pytest.raises(NotAModelFile, match="is not a model file"):
        check_model_file(text)


def test_import_rejects_non_gguf(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "home")
    with pytest.raises(UnsupportedModelFormat, match="not supported yet"):
        store.import_file(_safetensors(tmp_path / "m.safetensors"), "st")
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(NotAModelFile, match="not a model file"):
        store.import_file(text, "notes")
    assert store.list() == []
    assert list((tmp_path / "home" / "blobs").glob("sha256-*")) == []


def test_human_count() -> None:
    assert [human_count(n) for n in (999, 1_500, 134_515_008, 268_098_176, 999_700_000, 1_236_000_000, 70_000_000_000)] == [
        "999", "1.5K", "135M", "268M", "1B", "1.2B", "70B",
    ]
