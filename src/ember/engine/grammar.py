"""Structured output: JSON schema -> GBNF (pure, cached) and GBNF -> llama.cpp grammar sampler.

Two steps, at two places:

1. `schema_to_gbnf(schema)` / `json_object_gbnf()`: no model needed, so the
   service layer calls them while it checks a request, before any byte is
   sent. A schema whose keywords the grammar cannot enforce raises
   GrammarError naming the keyword (a 400), never a grammar that lets
   other JSON through. Results are cached per schema text.
2. `GrammarCompiler(vocab)`: compiles GBNF for one vocabulary, keeping the
   compiled grammars it has seen, and hands out fresh samplers (clones).
   The process engine checks a request's grammar with one in the server
   (against the vocabulary it tokenizes with) before the request reaches
   the worker, so a grammar llama.cpp refuses is a GrammarError from
   `generate` before its first event; the worker compiles its own.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from typing import Any

import llama_cpp

from ember.engine.schema_gbnf import SchemaError, SchemaGrammar
from ember.errors import BadRequest

ROOT = b"root"
MAX_GRAMMAR_CHARS = 1_000_000  # a schema whose grammar is larger than this is refused
SCHEMA_CACHE_SIZE = 256
COMPILED_CACHE_SIZE = 32


class GrammarError(BadRequest):
    """A schema or grammar ember cannot enforce: a 400 naming the keyword or the reason.

    `keyword` is the JSON schema keyword at fault (None when the reason is not one
    keyword, e.g. a grammar llama.cpp would not compile); `path` is the JSON pointer of
    the subschema that holds it.
    """

    default_code = "invalid_schema"

    def __init__(self, message: str, *, keyword: str | None = None, path: str = "", param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.keyword = keyword
        self.path = path


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """GBNF whose every text is JSON valid against `schema`; GrammarError if it cannot be enforced."""
    try:
        text = json.dumps(schema, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GrammarError(f"the schema is not JSON: {exc}") from None
    return _gbnf_for(text)


@functools.lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def _gbnf_for(schema_text: str) -> str:
    try:
        gbnf = SchemaGrammar().convert(json.loads(schema_text))
    except SchemaError as exc:
        raise GrammarError(exc.message, keyword=exc.keyword, path=exc.path) from None
    except RecursionError:
        raise GrammarError("the schema is nested too deeply") from None
    if len(gbnf) > MAX_GRAMMAR_CHARS:
        raise GrammarError(
            f"the schema makes a grammar of {len(gbnf)} characters; ember allows "
            f"{MAX_GRAMMAR_CHARS} (lower maxLength, maxItems or the nesting)"
        )
    return gbnf


def json_object_gbnf() -> str:
    """Any JSON object, with at most one space between tokens (`json_object`, Ollama's "json")."""
    return _gbnf_for('{"type":"object"}')


class GrammarCompiler:
    """Grammars compiled for one vocabulary; thread-safe.

    llama.cpp parses a grammar when a sampler is made from it (about a millisecond for a
    modest schema); here each GBNF text is parsed once and later requests get a clone.
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p, size: int = COMPILED_CACHE_SIZE) -> None:
        self._vocab = vocab
        self._size = size
        self._compiled: OrderedDict[str, llama_cpp.llama_sampler_p] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, gbnf: str) -> None:
        """GrammarError unless llama.cpp compiles `gbnf`."""
        with self._lock:
            self._prototype(gbnf)

    def sampler(self, gbnf: str) -> llama_cpp.llama_sampler_p:
        """A new grammar sampler at the grammar's start; the caller frees it (llama_sampler_free)."""
        with self._lock:
            clone = llama_cpp.llama_sampler_clone(self._prototype(gbnf))
        if not clone:
            raise GrammarError("the grammar could not be copied")
        return clone

    def _prototype(self, gbnf: str) -> llama_cpp.llama_sampler_p:
        found = self._compiled.get(gbnf)
        if found is not None:
            self._compiled.move_to_end(gbnf)
            return found
        if not gbnf.strip():
            raise GrammarError("the grammar is empty")
        compiled = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), ROOT)
        if not compiled:
            raise GrammarError("the grammar failed to compile (llama.cpp's log says where)")
        self._compiled[gbnf] = compiled
        while len(self._compiled) > self._size:
            _, oldest = self._compiled.popitem(last=False)
            llama_cpp.llama_sampler_free(oldest)
        return compiled

    def close(self) -> None:
        with self._lock:
            for compiled in self._compiled.values():
                llama_cpp.llama_sampler_free(compiled)
            self._compiled.clear()
