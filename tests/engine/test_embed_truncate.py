"""Both engines refuse an over-long embedding input when asked not to truncate, before decoding."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.engine.llama_engine import LlamaEngine
from ember.engine.process_engine import ProcessEngineLoader
from ember.engine.types import LoadOptions
from ember.errors import ContextLengthExceeded

LONG = "one two three four five six seven eight nine ten " * 300  # ~3000 tokens, past 2048


async def test_both_engines_refuse_an_input_past_the_embedding_context(model_path: Path) -> None:
    options = LoadOptions(num_ctx=512, num_parallel=1)
    worker = await ProcessEngineLoader().load(model_path, options)
    inprocess = LlamaEngine.open(model_path, options)
    try:
        for engine in (worker, inprocess):
            with pytest.raises(ContextLengthExceeded) as exc:
                await engine.embed(["fits", LONG], truncate=False)
            assert exc.value.param == "input" and exc.value.status_code == 400
            assert "input[1] is" in exc.value.message and "embedding context is 2048 tokens" in exc.value.message
            fine = await engine.embed(["fits"], truncate=False)
            assert len(fine.vectors) == 1 and fine.prompt_tokens > 0
        assert worker.alive  # a refused request leaves the worker serving
    finally:
        await worker.close()
        await inprocess.close()
