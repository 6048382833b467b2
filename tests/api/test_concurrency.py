"""Many users at once: concurrent requests are batched and never mix."""

from __future__ import annotations

import asyncio

import openai
import pytest

MODEL = "smollm2:135m"
QUESTIONS = [
    "What is the capital of France?", "Name a fruit that is yellow.", "What do bees make?",
    "How many legs does a spider have?", "What colour is the sky?", "Name a large ocean.",
    "What is two plus two?", "What animal says moo?",
]


@pytest.mark.slow
async def test_eight_concurrent_chats_match_their_solo_answers(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_NUM_PARALLEL="4")
    client = openai.AsyncOpenAI(base_url=srv.url("/v1"), api_key="x", max_retries=0, timeout=300)

    async def ask(question: str) -> tuple[str, int]:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=24)
        return reply.choices[0].message.content, reply.usage.completion_tokens

    solo = [await ask(q) for q in QUESTIONS]
    together = await asyncio.gather(*(ask(q) for q in QUESTIONS))  # 4 slots: 4 run, 4 wait their turn
    assert together == solo
    assert len(set(text for text, _ in solo)) == len(QUESTIONS)
    await client.close()
