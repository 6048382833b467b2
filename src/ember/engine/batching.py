"""Continuous batching over one llama.cpp context (runs inside the worker process).

Each of `num_parallel` slots is one llama.cpp sequence (seq_id = slot index)
with its own `num_ctx` tokens of KV cache. Every step builds one llama_batch:
the next token of every slot that is generating and chunks of the prompts
still being read, laid out in seq-id order (the non-unified cache splits a
batch into ubatches of consecutive seq ids: any other order costs extra graph
runs). One llama_decode runs them all; each slot whose prompt is complete then
samples from its own output with its own chain.

Prompt budget per step: the whole batch while nothing generates; while streams
generate, at most `prefill_while_generating` prompt tokens, so a step stays a
fraction of a second on a small CPU and no stream stalls for long. Within the
budget the prompt with the fewest tokens left is read first (a warm suffix
never waits behind a cold prompt), except that the prompt admitted earliest
always gets a share of every step: a stream of short prompts cannot starve it.

A slot that finishes keeps its KV cache and the list of tokens in it; a new
request goes to the free slot sharing the longest prefix with its prompt and
evaluates only the rest.

A request with a grammar gets its own grammar sampler (compiled once per
GBNF text, cloned per request) beside its chain; it is freed with the chain.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import llama_cpp

from ember.engine.constrained import Candidates, GrammarSampler, GrammarStuck
from ember.engine.grammar import GrammarCompiler, GrammarError
from ember.engine.ipc import Update
from ember.engine.logprobs import LogprobReader
from ember.engine.sampling import Detokenizer, SamplerChain
from ember.engine.text import StopMatcher, Utf8Stream
from ember.engine.types import FinishReason, GenerationRequest, GenerationStats, TokenLogprob

log = logging.getLogger("ember.engine")

# The fewest shared prompt tokens worth copying another slot's cache for (or waiting for a
# prompt being read): a copy moves a whole sequence's cache, which costs about as much as
# reading a few dozen tokens on a small CPU.
MIN_SHARED_COPY = 64
# The share of a step's prompt budget the earliest-admitted prompt always gets (if it needs it),
# however many shorter prompts are waiting: every prompt is read to its end in bounded time.
OLDEST_SHARE = 4  # 1/4 of the budget


@dataclass(frozen=True)
class BatchConfig:
    slots: int  # sequences decoded together (num_parallel)
    slot_context: int  # KV cells per sequence (num_ctx)
    batch_tokens: int = 512  # most tokens in one llama_decode (the context's n_batch)
    # Prompt tokens per step while other slots are generating: small enough that their next
    # token is at most ~0.2 s late on a small CPU. On 2 cores (SmolLM2-135M, ~520 prompt tok/s,
    # 8 streams' step ~26 ms) a step of 8 streams and 96 prompt tokens takes ~210 ms, and a
    # short chat prompt is still read in one step. Prompt tokens cost about the same per token
    # in chunks of 64 or 256, so a smaller chunk costs the prompt little.
    prefill_while_generating: int = 96
    # Log one line per decode step (ember.engine, debug level): where a step's time goes.
    profile: bool = False


@dataclass(frozen=True)
class SchedulerCounters:
    """Totals since the scheduler was made: what tests and the profile read."""

    steps: int  # decode steps run
    admissions: int  # requests given a slot
    copies: int  # caches copied from one slot to another (shared prefixes)
    prompt_tokens: int  # prompt tokens decoded (read), cached ones not counted


@dataclass
class Job:
    """One generation request, from its arrival to its last token."""

    rid: int
    request: GenerationRequest
    limit: int  # most tokens to sample: max_tokens capped by the room left in the slot
    chain: SamplerChain
    matcher: StopMatcher
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    admitted_at: float = 0.0
    first_token_at: float | None = None
    produced: int = 0
    cached: int = 0  # prompt tokens found in the slot's KV cache, not evaluated again


@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV cache holds, in order
    job: Job | None = None
    feed: list[int] = field(default_factory=list)  # tokens to decode in the coming steps
    last_used: int = 0  # step counter when it last held a job: ties go to the least recent
    admitted: int = 0  # admission counter: earlier prompts are read first

    @property
    def generating(self) -> bool:
        """Past its prompt: one new token per step."""
        return self.job is not None and self.job.first_token_at is not None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    # Compare in blocks first: cheap in Python for the long shared prefixes that matter.
    i = 0
    block = 256
    while i + block <= n and a[i : i + block] == b[i : i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Reading:
    """A slot still reading its prompt, as the step's planning sees it."""

    seq_id: int
    left: int  # prompt tokens not yet decoded
    admitted: int  # admission counter: lower came first


def plan_prompts(reading: Sequence[Reading], budget: int) -> dict[int, int]:
    """How many prompt tokens each reading slot gets this step (seq_id -> count, all > 0).

    Fewest tokens left first, so short prompts (a warm prefix's suffix, a short question) get
    their first token at once; but the earliest-admitted prompt is given a share of the budget
    before that, so it advances every step whatever arrives after it.
    """
    if not reading or budget <= 0:
        return {}
    plan: dict[int, int] = {}
    oldest = min(reading, key=lambda r: r.admitted)
    plan[oldest.seq_id] = min(oldest.left, max(1, budget // OLDEST_SHARE))
    budget -= plan[oldest.seq_id]
    for entry in sorted(reading, key=lambda r: (r.left, r.admitted)):
        if budget <= 0:
            break
        given = plan.get(entry.seq_id, 0)
        more = min(entry.left - given, budget)
        if more > 0:
            plan[entry.seq_id] = given + more
            budget -= more
    return plan


class BatchScheduler:
    def __init__(self, ctx: llama_cpp.llama_context_p, model: llama_cpp.llama_model_p, config: BatchConfig) -> None:
        self._ctx = ctx
        self._config = config
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._detokenizer = Detokenizer(self._vocab)
        self._grammars = GrammarCompiler(self._vocab)
        self._candidates = Candidates(self._vocab)  # shared by the requests with a grammar
        self._batch = llama_cpp.llama_batch_init(config.batch_tokens, 0, 1)
        self._slots = [Slot(seq_id=i) for i in range(config.slots)]
        self._waiting: deque[Job] = deque()
        self._steps = 0
        self._step_generating = 0  # sequences that had a token in the last batch
        self._admissions = 0
        self._copies = 0  # caches copied from one slot to another (shared prefixes)
        self._prompt_read = 0  # prompt tokens decoded
        self._logprobs = LogprobReader(self._vocab)  # for requests that ask for logprobs

    # --- requests in and out -------------------------------------------------

    def submit(self, rid: int, request: GenerationRequest) -> Update | None:
        """Queue a request; an Update when it is finished without any decoding."""
        prompt = request.prompt_tokens
        if prompt and (min(prompt) < 0 or max(prompt) >= self._n_vocab):
            # llama_decode would reject the whole batch, failing everyone's request.
            return Update(rid=rid, text="", error="the prompt has token ids outside the vocabulary")
        room = self._config.slot_context - len(prompt)
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        if limit <= 0:
            stats = GenerationStats(
                prompt_tokens=len(prompt), completion_tokens=0, prompt_eval_seconds=0.0, eval_seconds=0.0
            )
            return Update(rid=rid, text="", finish="length", stats=stats)
        chain = SamplerChain.build(request.sampling, n_vocab=self._n_vocab, history=self._config.slot_context)
        if request.grammar is not None:
            try:
                grammar = GrammarSampler(self._grammars.sampler(request.grammar))
            except GrammarError as exc:
                chain.free()
                return Update(rid=rid, text="", error=exc.message)
            self._candidates.prepare()
            chain.constrain(grammar, self._candidates)
        self._waiting.append(Job(rid=rid, request=request, limit=limit, chain=chain, matcher=StopMatcher(request.stop)))
        return None

    def cancel(self, rid: int) -> None:
        """Forget a request; its slot is free for the next step (its KV cache stays reusable)."""
        for job in self._waiting:
            if job.rid == rid:
                self._waiting.remove(job)
                job.chain.free()
                return
        for slot in self._slots:
            if slot.job is not None and slot.job.rid == rid:
                self._release(slot)
                return

    @property
    def counters(self) -> SchedulerCounters:
        return SchedulerCounters(
            steps=self._steps, admissions=self._admissions, copies=self._copies, prompt_tokens=self._prompt_read
        )

    @property
    def busy(self) -> bool:
        return bool(self._waiting) or any(slot.job is not None for slot in self._slots)

    def close(self) -> None:
        for slot in self._slots:
            if slot.job is not None:
                self._release(slot)
        for job in self._waiting:
            job.chain.free()
        self._waiting.clear()
        self._grammars.close()
        llama_cpp.llama_batch_free(self._batch)

    # --- one decode step -----------------------------------------------------

    def step(self) -> list[Update]:
        """Admit waiting requests, decode one batch, sample; the updates it produced."""
        self._steps += 1
        began = time.perf_counter()
        self._admit()
        outputs = self._fill_batch()
        if self._batch.n_tokens == 0:
            return []
        filled = time.perf_counter()
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            return self._fail_batch(status)
        now = time.perf_counter()
        updates: list[Update] = []
        for slot, index in outputs:
            update = self._sample(slot, index, now)
            if update is not None:
                updates.append(update)
        if self._config.profile:
            self._log_step(began, filled, now, time.perf_counter())
        return updates

    def _log_step(self, began: float, filled: float, decoded: float, sampled: float) -> None:
        """One line per step: decode (llama.cpp), sampling (samplers and stop matching), Python
        (admission and filling the batch), the prompt tokens read and the sequences generating."""
        log.debug(
            "step %d: decode %.2f ms, sample %.2f ms, python %.2f ms, %d tokens (%d prompt), %d generating, %d waiting",
            self._steps,
            (decoded - filled) * 1e3,
            (sampled - decoded) * 1e3,
            (filled - began) * 1e3,
            self._batch.n_tokens,
            self._batch.n_tokens - self._step_generating,
            self._step_generating,
            len(self._waiting),
        )

    def _admit(self) -> None:
        deferred: list[Job] = []
        while self._waiting:
            free = [slot for slot in self._slots if slot.job is None]
            if not free:
                break
            job = self._waiting.popleft()
            prompt = job.request.prompt_tokens
            held = {slot.seq_id: common_prefix(slot.tokens, prompt) for slot in self._slots}
            longest = max(held.values())
            coming = self._coming(prompt)
            if coming >= MIN_SHARED_COPY and coming > longest:
                # A prompt being read now shares more of this one than any cache holds: wait until
                # it is read and copy its cache, rather than reading the same tokens twice side by
                # side (and from the same point on as when the prefix is found in a free slot).
                deferred.append(job)
                continue
            slot = max(free, key=lambda s: (held[s.seq_id], -s.last_used))
            if longest - held[slot.seq_id] >= MIN_SHARED_COPY:
                # A busy slot holds more of the prompt: copy its cache into the free slot whose
                # own cache is worth least.
                donor = next(s for s in self._slots if held[s.seq_id] == longest)
                slot = min(free, key=lambda s: (held[s.seq_id], s.last_used))
                self._copy_cache(donor, slot)
                held[slot.seq_id] = longest
            # Keep the shared prefix, but always evaluate at least one prompt token:
            # its logits are where the first sample comes from.
            keep = min(held[slot.seq_id], len(prompt) - 1)
            if keep < len(slot.tokens):
                if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
                    llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                    keep = 0
                del slot.tokens[keep:]
            job.cached = keep
            job.admitted_at = time.perf_counter()
            job.chain.accept_history(prompt[:keep])
            self._admissions += 1
            slot.job, slot.feed, slot.admitted = job, list(prompt[keep:]), self._admissions
        self._waiting.extendleft(reversed(deferred))  # they keep their place in the queue

    def _coming(self, prompt: Sequence[int]) -> int:
        """How much of `prompt` some slot still reading its own prompt will have in its cache."""
        return max(
            (
                common_prefix(slot.job.request.prompt_tokens, prompt)
                for slot in self._slots
                if slot.job is not None and slot.feed and not slot.generating
            ),
            default=0,
        )

    def _copy_cache(self, donor: Slot, target: Slot) -> None:
        """Make target's cache a copy of donor's. Between the sequences of a non-unified cache
        llama.cpp copies only whole sequences; the caller trims the tail it does not share."""
        llama_cpp.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, donor.seq_id, target.seq_id, -1, -1)
        target.tokens = list(donor.tokens)
        self._copies += 1

    def _fill_batch(self) -> list[tuple[Slot, int]]:
        """Put this step's tokens in the batch, in seq-id order; (slot, batch index) of each wanted output."""
        batch = self._batch
        batch.n_tokens = 0
        outputs: list[tuple[Slot, int]] = []
        generating = sum(1 for slot in self._slots if slot.generating)
        self._step_generating = generating  # one token each in this batch
        room = self._config.batch_tokens - generating
        budget = min(room, self._config.prefill_while_generating) if generating else room
        chunks = self._plan_prompts(budget)
        for slot in self._slots:
            if slot.generating:
                outputs.append((slot, self._add(slot, slot.feed, want_last=True)))
                slot.tokens.extend(slot.feed)
                slot.feed = []
                continue
            size = chunks.get(slot.seq_id, 0)
            if size == 0:
                continue
            assert slot.job is not None
            chunk = slot.feed[:size]
            last_of_prompt = size == len(slot.feed)
            index = self._add(slot, chunk, want_last=last_of_prompt)
            # The penalties see the prompt too, as the tokens are evaluated.
            slot.job.chain.accept_history(chunk)
            if last_of_prompt:
                outputs.append((slot, index))
            slot.tokens.extend(chunk)
            del slot.feed[:size]
            self._prompt_read += size
        return outputs

    def _plan_prompts(self, budget: int) -> dict[int, int]:
        reading = [
            Reading(slot.seq_id, len(slot.feed), slot.admitted)
            for slot in self._slots
            if slot.job is not None and not slot.generating and slot.feed
        ]
        return plan_prompts(reading, budget)

    def _add(self, slot: Slot, tokens: Sequence[int], *, want_last: bool) -> int:
        """Append tokens of one sequence to the batch; the batch index of the last."""
        batch = self._batch
        start = batch.n_tokens
        base = len(slot.tokens)
        for offset, token in enumerate(tokens):
            i = start + offset
            batch.token[i] = token
            batch.pos[i] = base + offset
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq_id
            batch.logits[i] = 0
        last = start + len(tokens) - 1
        if want_last:
            batch.logits[last] = 1
        batch.n_tokens = start + len(tokens)
        return last

    def _sample(self, slot: Slot, index: int, now: float) -> Update | None:
        job = slot.job
        assert job is not None
        if job.first_token_at is None:
            job.first_token_at = now
        try:
            token = job.chain.sample(self._ctx, index)
        except GrammarStuck as exc:
            self._release(slot)
            return Update(rid=job.rid, text="", error=f"constrained sampling failed: {exc}")
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return self._finish(slot, "stop", "")
        job.produced += 1
        # One entry per completion token, sent with this step's update even while the stop
        # matcher holds the token's text back (the end-of-generation token above gets none).
        lps = self._token_logprobs(job, index, token)
        text = job.matcher.feed(job.utf8.feed(self._detokenizer.piece(token)))
        if job.matcher.stopped:
            return self._finish(slot, "stop", text, lps)
        if job.produced >= job.limit:
            return self._finish(slot, "length", text, lps)
        slot.feed = [token]
        return Update(rid=job.rid, text=text, logprobs=lps) if text or lps else None

    def _token_logprobs(self, job: Job, index: int, token: int) -> tuple[TokenLogprob, ...]:
        """The sampled token's entry when the request asked for logprobs; () otherwise, at no cost."""
        if job.request.logprobs is None:
            return ()
        return (self._logprobs.read(self._ctx, index, token, job.request.logprobs),)

    def _finish(self, slot: Slot, reason: FinishReason, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> Update:
        job = slot.job
        assert job is not None
        if not job.matcher.stopped:
            text += job.matcher.feed(job.utf8.flush()) + job.matcher.flush()
        end = time.perf_counter()
        first = job.first_token_at or end
        stats = GenerationStats(
            prompt_tokens=len(job.request.prompt_tokens),
            completion_tokens=job.produced,
            prompt_eval_seconds=first - job.admitted_at,
            eval_seconds=end - first,
            cached_prompt_tokens=job.cached,
        )
        self._release(slot)
        return Update(
            rid=job.rid, text=text, finish=reason, stats=stats, logprobs=logprobs, stop_sequence=job.matcher.matched
        )

    def _release(self, slot: Slot) -> None:
        assert slot.job is not None
        slot.job.chain.free()
        slot.job = None
        # Tokens fed but not decoded never reached the KV cache; slot.tokens is exact.
        slot.feed = []
        slot.last_used = self._steps

    def _fail_batch(self, status: int) -> list[Update]:
        """llama_decode refused the batch: fail every active request and forget its cache.

        After a failed decode part of the batch may be in the KV cache, so no
        slot's token list can be trusted.
        """
        updates: list[Update] = []
        message = f"llama_decode failed with status {status}"
        for slot in self._slots:
            if slot.job is not None:
                updates.append(Update(rid=slot.job.rid, text="", error=message))
                self._release(slot)
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.tokens = []
        return updates
