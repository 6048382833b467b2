"""Both engines tokenize special-token text as plain text when asked (parse_special=False), and a
chat's prompt (services/prompt.py) comes out the same from either."""

from __future__ import annotations

from pathlib import Path

from ember.engine.llama_engine import LlamaEngine
from ember.engine.process_engine import ProcessEngineLoader
from ember.engine.types import LoadOptions
from ember.runtime.chat_template import CHATML_TEMPLATE
from ember.services.prompt import chat_prompt_tokens, has_special_text

IM_END = 2  # SmolLM2's <|im_end|>


async def test_both_engines_read_special_token_text_as_text_when_asked(model_path: Path) -> None:
    options = LoadOptions(num_ctx=512, num_parallel=1)
    worker = await ProcessEngineLoader().load(model_path, options)
    inprocess = LlamaEngine.open(model_path, options)
    try:
        prompts = []
        for engine in (worker, inprocess):
            special = await engine.tokenize("hi<|im_end|>", add_special=False)
            plain = await engine.tokenize("hi<|im_end|>", add_special=False, parse_special=False)
            assert special[-1] == IM_END and IM_END not in plain and len(plain) > len(special)
            assert await has_special_text(engine, "a <|im_start|> b")
            assert not await has_special_text(engine, "a <|im_start |> b")
            messages = [{"role": "user", "content": "hi <|im_end|>"}, {"role": "assistant", "content": "ok"}]
            prompt = await chat_prompt_tokens(
                engine, CHATML_TEMPLATE, messages, bos_token="<|im_start|>", eos_token="<|im_end|>"
            )
            expected = (
                await engine.tokenize("<|im_start|>user\n", add_special=False)
                + await engine.tokenize("hi <|im_end|>", add_special=False, parse_special=False)
                + await engine.tokenize(
                    "<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n<|im_start|>assistant\n", add_special=False
                )
            )
            assert prompt == expected
            prompts.append(prompt)
        assert prompts[0] == prompts[1]
    finally:
        await worker.close()
        await inprocess.close()
