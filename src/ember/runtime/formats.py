"""Recognise model files and read GGUF metadata.

ember serves GGUF only; safetensors and ONNX files are recognised so the user
hears "not supported yet" instead of "not a model file".
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.errors import NotAModelFile, UnsupportedModelFormat

_SNIFF_BYTES = 4096
# A safetensors header is JSON; anything claiming more than this is not one.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# Field tags of onnx.ModelProto (field number << 3 | wire type) that may follow ir_version.
_ONNX_NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x4A, 0x52, 0x72, 0x7A})
_ONNX_PRODUCERS = (b"onnx", b"pytorch", b"tensorflow", b"keras", b"optimum", b"paddle")
# Used when a GGUF file does not say: llama.cpp's historical default context.
_FALLBACK_CONTEXT_LENGTH = 2048


@dataclass(frozen=True)
class ModelMetadata:
    """What ember needs to know about a model, read once when it enters the store."""

    architecture: str
    parameter_count: int
    quantization: str
    context_length: int
    embedding_length: int | None
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    name: str | None
    # f16 K and V bytes one token of context costs across all layers; sizes the KV cache
    # before a load. None for manifests written before ember recorded it.
    kv_bytes_per_token: int | None = None

    def parameter_size(self) -> str:
        """Human size as model names spell it: "135M", "268M", "1.2B", "70B"."""
        return human_count(self.parameter_count)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMetadata:
        # Ignore keys a newer ember may have added; default the optional ones an older one lacked.
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for optional in ("embedding_length", "chat_template", "bos_token", "eos_token", "name", "kv_bytes_per_token"):
            values.setdefault(optional, None)
        return cls(**values)

    def gguf_info(self) -> dict[str, object]:
        """Ollama's `model_info` keys for /api/show."""
        info: dict[str, object] = {
            "general.architecture": self.architecture,
            "general.parameter_count": self.parameter_count,
            f"{self.architecture}.context_length": self.context_length,
        }
        if self.embedding_length is not None:
            info[f"{self.architecture}.embedding_length"] = self.embedding_length
        return info


def human_count(n: int) -> str:
    """135_000_000 -> "135M"; one decimal below 10 of a unit ("1.2B"), none above."""
    units = ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K"))
    for i, (scale, unit) in enumerate(units):
        if n < scale:
            continue
        text = _one_significant_decimal(n / scale)
        if text == "1000" and i > 0:  # 999.7M reads better as 1B
            scale, unit = units[i - 1]
            text = _one_significant_decimal(n / scale)
        return f"{text}{unit}"
    return str(n)


def _one_significant_decimal(value: float) -> str:
    text = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
    return text.removesuffix(".0")


def sniff_format(path: Path) -> str:
    """ "gguf", "safetensors", "onnx" or "unknown", from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        size = f.seek(0, 2)
    if head[:4] == b"GGUF":
        return "gguf"
    if _looks_like_safetensors(head, size):
        return "safetensors"
    if _looks_like_onnx(head, path):
        return "onnx"
    return "unknown"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= _MAX_SAFETENSORS_HEADER and header_len + 8 <= size and head[8:9] == b"{"


def _looks_like_onnx(head: bytes, path: Path) -> bool:
    # ModelProto starts with field 1 (ir_version, a small varint), then another top-level field.
    if len(head) < 3 or head[0] != 0x08 or not 1 <= head[1] <= 30 or head[2] not in _ONNX_NEXT_TAGS:
        return False
    return path.suffix.lower() == ".onnx" or any(p in head.lower() for p in _ONNX_PRODUCERS)


def check_model_file(path: Path) -> None:
    """Raise unless `path` is a GGUF file ember can serve."""
    require_gguf(path)
    read_gguf_metadata(path)


def require_gguf(path: Path, *, shown_as: str | None = None) -> None:
    """The cheap half of check_model_file: the format, by magic bytes, without parsing.

    shown_as names the file in messages (a URL or the user's path rather than a temp file).
    """
    path = Path(path)
    label = shown_as or str(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        raise UnsupportedModelFormat(
            f"safetensors models are not supported yet: ember serves GGUF files "
            f"(convert {label} with llama.cpp's convert_hf_to_gguf.py, or pull a GGUF build)"
        )
    if fmt == "onnx":
        raise UnsupportedModelFormat(f"ONNX models are not supported yet: ember serves GGUF files ({label} is ONNX)")
    if fmt != "gguf":
        raise NotAModelFile(f"{label} is not a model file (expected GGUF)")


def read_gguf_metadata(path: Path, *, shown_as: str | None = None) -> ModelMetadata:
    """Metadata of a GGUF file; NotAModelFile when it is not GGUF, truncated or corrupt."""
    from gguf import GGUFReader  # numpy-heavy import, paid only by callers that parse files

    path = Path(path)
    label = shown_as or str(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise NotAModelFile(f"{label} is not a model file (expected GGUF)")
    reader: Any = None
    try:
        reader = GGUFReader(path)
        return _metadata_from_reader(reader, path.stat().st_size)
    except NotAModelFile as exc:
        raise NotAModelFile(f"{label} is truncated or corrupt: {exc.message}") from exc
    except Exception as exc:  # the reader fails in many ways on damaged files (ValueError, IndexError, ...)
        raise NotAModelFile(f"{label} is truncated or corrupt: {exc}") from exc
    finally:
        del reader  # drop the memory map now, not at the next garbage collection


def _metadata_from_reader(reader: Any, file_size: int) -> ModelMetadata:
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > file_size:
        raise NotAModelFile(f"tensor data ends at byte {end} but the file has {file_size} bytes")

    def scalar(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    architecture = scalar("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise NotAModelFile("no general.architecture key")
    parameter_count = scalar("general.parameter_count")
    if parameter_count is None:
        parameter_count = sum(int(t.n_elements) for t in reader.tensors)
    embedding = scalar(f"{architecture}.embedding_length")
    return ModelMetadata(
        architecture=architecture,
        parameter_count=int(parameter_count),
        quantization=_quantization(scalar("general.file_type")),
        context_length=int(scalar(f"{architecture}.context_length") or _FALLBACK_CONTEXT_LENGTH),
        embedding_length=None if embedding is None else int(embedding),
        chat_template=scalar("tokenizer.chat_template"),
        bos_token=_token_text(reader, scalar("tokenizer.ggml.bos_token_id")),
        eos_token=_token_text(reader, scalar("tokenizer.ggml.eos_token_id")),
        name=scalar("general.name"),
        kv_bytes_per_token=kv_bytes_per_token(scalar, architecture),
    )


def kv_bytes_per_token(scalar: Callable[[str], Any], arch: str) -> int | None:
    """f16 K and V bytes per token of context over all layers, from GGUF keys read by `scalar`."""

    def number(key: str) -> int | None:
        value = scalar(key)
        if isinstance(value, list):  # per-layer counts in some architectures: size for the largest
            value = max(value) if value else None
        return None if value is None else int(value)

    layers = number(f"{arch}.block_count")
    embedding = number(f"{arch}.embedding_length")
    heads = number(f"{arch}.attention.head_count")
    if not layers or not embedding or not heads:
        return None
    kv_heads = number(f"{arch}.attention.head_count_kv") or heads
    key_length = number(f"{arch}.attention.key_length") or embedding // heads
    value_length = number(f"{arch}.attention.value_length") or key_length
    return layers * kv_heads * (key_length + value_length) * 2


def _quantization(file_type: Any) -> str:
    from gguf import LlamaFileType

    if file_type is None:
        return "unknown"
    try:
        name = LlamaFileType(int(file_type)).name
    except ValueError:
        return "unknown"
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return name


def _token_text(reader: Any, token_id: Any) -> str | None:
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if token_id is None or tokens is None or not 0 <= int(token_id) < len(tokens.data):
        return None
    return tokens.contents(int(token_id))
