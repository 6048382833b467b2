"""The ceiling row of bench/peers.sh: a bare Python loop over llama.cpp's batch API.

    .venv/bin/python bench/bare_loop.py MODEL.gguf [--threads 2] [--sequences 1,4,8] [--json out.json]

No HTTP, no scheduler, no penalties: each level reads one short distinct prompt per sequence
in one batch, then decodes every sequence in lock-step, one token each per llama_decode,
greedy by a numpy argmax over the logits, until each has `--tokens` tokens. What it reports
per level is the decode rate (generated tokens / decode seconds, the prompt read excluded) and
the rate with the prompt read included, so a server's aggregate tok/s can be read against
what the same llama.cpp and Python can do at all on this machine. The context is made as
ember's worker makes it (a non-unified cache of 4096 cells per sequence, flash attention
auto, n_batch 512), so the two differ only by what ember adds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

WORDS = "the of and to in is was for on with as by at from his her that it an be this which or had not".split()


# Kept at module level: llama.cpp calls it for as long as the process runs.
_QUIET = llama_cpp.llama_log_callback(lambda *_: None)


def prompt_tokens(vocab: llama_cpp.llama_vocab_p, index: int, length: int) -> list[int]:
    """About `length` tokens of numbered common words, different from the first token on."""
    text = f"{index}: " + " ".join(WORDS[(index * 7 + i) % len(WORDS)] for i in range(length))
    data = text.encode()
    buffer = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, len(data) + 8, True, False)
    return list(buffer[: min(n, length)])


def greedy(ctx: llama_cpp.llama_context_p, index: int, n_vocab: int) -> int:
    logits = np.ctypeslib.as_array(
        ctypes.cast(llama_cpp.llama_get_logits_ith(ctx, index), ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)
    )
    return int(np.argmax(logits))


def run_level(model: llama_cpp.llama_model_p, threads: int, sequences: int, tokens: int, prompt: int) -> dict:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 4096 * sequences
    params.n_seq_max = sequences
    params.kv_unified = False
    params.n_batch = params.n_ubatch = 512
    params.n_outputs_max = sequences
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = llama_cpp.llama_init_from_model(model, params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    try:
        prompts = [prompt_tokens(vocab, 1000 * sequences + s, prompt) for s in range(sequences)]
        began = time.perf_counter()
        # The prompts are read in as few decodes as the batch allows (a whole prompt per decode,
        # never split); each prompt's last logits are sampled before the next decode.
        outputs: list[int] = []
        firsts: list[int] = []
        batch.n_tokens = 0

        def read_batch() -> None:
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("prompt decode failed")
            firsts.extend(greedy(ctx, index, n_vocab) for index in outputs)
            outputs.clear()
            batch.n_tokens = 0

        for seq, tokens_of in enumerate(prompts):
            if batch.n_tokens + len(tokens_of) > 512:
                read_batch()
            for pos, token in enumerate(tokens_of):
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = pos == len(tokens_of) - 1
                batch.n_tokens += 1
            outputs.append(batch.n_tokens - 1)
        read_batch()
        positions = [len(p) for p in prompts]
        read = time.perf_counter()
        generated = 0
        next_tokens = firsts
        for step in range(tokens):
            if step:
                next_tokens = [greedy(ctx, index, n_vocab) for index in outputs]
            generated += len(next_tokens)
            batch.n_tokens = 0
            outputs = []
            for seq, token in enumerate(next_tokens):
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, positions[seq], 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = 1
                batch.n_tokens += 1
                positions[seq] += 1
                outputs.append(i)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("decode failed")
        done = time.perf_counter()
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return {
        "sequences": sequences,
        "tokens_per_sequence": tokens,
        "prompt_tokens": sum(len(p) for p in prompts),
        "decode_tps": generated / (done - read),
        "total_tps": generated / (done - began),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per sequence")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="write the levels here as JSON")
    args = parser.parse_args(argv)
    llama_cpp.llama_backend_init()
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))
    model_params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(args.model).encode(), model_params)
    if not model:
        print(f"error: could not load {args.model}", file=sys.stderr)
        return 1
    levels = []
    try:
        for sequences in (int(s) for s in args.sequences.split(",")):
            level = run_level(model, args.threads, sequences, args.tokens, args.prompt_tokens)
            print(
                f"[bare loop] {sequences} sequence(s): decode {level['decode_tps']:.1f} tok/s, "
                f"with the prompt read {level['total_tps']:.1f} tok/s",
                file=sys.stderr,
            )
            levels.append(level)
    finally:
        llama_cpp.llama_model_free(model)
    document = {"schema": "ember-bare-loop/1", "threads": args.threads, "levels": levels}
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    else:
        print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
