"""Sampling under a grammar, as llama-server does it and cheaper where it falls back (worker side).

A request's grammar sampler stays outside its chain. Each token:

1. the chain samples from the whole vocabulary as without a grammar
   (llama_sampler_sample, in C). Sampling also feeds the token to the chain's
   repeat penalties, which a refused token must not reach: where they are on,
   a copy of the chain from before is kept (llama_sampler_clone, ~10 us);
2. the grammar checks only that one token; most tokens pass, the copy is
   dropped, and that is all. A control token without text (other than the
   end of generation) counts as refused: llama.cpp's grammar reads it by
   its name, the answer's text never shows it;
3. when it refuses, the copy takes the chain's place and the token is
   sampled again among the tokens the grammar allows. Applying a grammar to
   all of a 49k vocabulary costs 10-25 ms here (llama.cpp decodes every
   candidate's text), more than a decode step of a small model, so the
   rescue first narrows the vocabulary exactly: tokens are grouped by their
   first byte (the big groups, such as all the words with a leading space,
   also by their second), and the grammar is asked about one token per
   group, the token that is just that prefix. A group whose prefix the
   grammar refuses cannot hold an allowed token. Where the groups left are
   few (structure: after `{`, inside a property name) the grammar is applied
   to them only and the choice is exact. Where they are many (inside a
   string, where refusals are rare) it is applied to the RESCUE_CANDIDATES
   likeliest of them first, and to all of them only if none of those
   passes: below rank 512 a token's probability is negligible, so that
   choice is practically the same.

The chosen token is accepted by the grammar and the chain alike. Only a token
the grammar allowed is ever accepted by it (llama.cpp aborts on any other).
"""

from __future__ import annotations

import ctypes
from collections import defaultdict
from dataclasses import dataclass

import llama_cpp
import numpy as np
import numpy.typing as npt

RESCUE_CANDIDATES = 512
EXACT_LIMIT = 4096  # groups left holding at most this many tokens: apply the grammar to them all
SPLIT_GROUP = 1024  # first-byte groups larger than this are split by the second byte
# llama_token_data, as numpy sees it: filled from the logits without a Python loop.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)

IntArray = npt.NDArray[np.int64]


class GrammarStuck(RuntimeError):
    """The grammar allows no token at all (a grammar that cannot go on, or logits all -inf)."""


def _pieces(vocab: llama_cpp.llama_vocab_p, n_vocab: int) -> list[bytes]:
    buffer = ctypes.create_string_buffer(256)
    pieces = []
    for token in range(n_vocab):
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, 256, 0, False)
        if n < 0:  # longer than the buffer: only its first two bytes matter here
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(vocab, token, big, -n, 0, False)
            pieces.append(big.raw[:n])
        else:
            pieces.append(buffer.raw[:n])
    return pieces


@dataclass(frozen=True)
class PrefixIndex:
    """The vocabulary's tokens grouped by their first byte (big groups: first two bytes).

    A group's probes are tokens whose text is exactly its prefix (-1: none, so the
    group cannot be ruled out at that level).
    """

    group_of: IntArray  # per token: its group, or len(first_probe) for texts llama.cpp refuses (empty)
    first_probe: IntArray  # per group
    second_probe: IntArray  # per group (-1: none, or the group is not split)
    first_probes: IntArray  # the distinct first probes, to ask the grammar about together
    visible: npt.NDArray[np.bool_]  # per token: it has a text (or it ends the generation)

    @classmethod
    def build(cls, vocab: llama_cpp.llama_vocab_p, n_vocab: int, ends: IntArray) -> PrefixIndex:
        pieces = _pieces(vocab, n_vocab)
        exact: dict[bytes, int] = {}
        by_first: defaultdict[int, list[int]] = defaultdict(list)
        for token, piece in enumerate(pieces):
            if len(piece) <= 2:
                exact.setdefault(piece, token)
            if piece and piece[0] != 0:  # llama.cpp refuses empty texts and texts starting with NUL
                by_first[piece[0]].append(token)
        groups: list[tuple[int, int, list[int]]] = []
        for first, members in by_first.items():
            probe = exact.get(bytes([first]), -1)
            if len(members) <= SPLIT_GROUP:
                groups.append((probe, -1, members))
                continue
            by_second: defaultdict[int, list[int]] = defaultdict(list)
            alone = []
            for token in members:
                piece = pieces[token]
                if len(piece) == 1:
                    alone.append(token)
                else:
                    by_second[piece[1]].append(token)
            groups.append((probe, -1, alone))
            groups.extend((probe, exact.get(bytes([first, second]), -1), sub) for second, sub in by_second.items())
        group_of = np.full(n_vocab, len(groups), dtype=np.int64)
        for index, (_, _, members) in enumerate(groups):
            group_of[members] = index
        first_probe = np.array([g[0] for g in groups], dtype=np.int64)
        visible = group_of < len(groups)
        visible[ends] = True
        return cls(
            group_of=group_of,
            visible=visible,
            first_probe=first_probe,
            second_probe=np.array([g[1] for g in groups], dtype=np.int64),
            first_probes=np.unique(first_probe[first_probe >= 0]),
        )


class Candidates:
    """Reusable llama_token_data arrays over one vocabulary; one per scheduler (not thread-safe).

    The prefix index is built when first needed (`prepare`, at a worker's first grammar
    request): about 0.2 s for 49k tokens, once. Not on a thread: a Python loop beside the
    decode loop would make each of that loop's C calls wait up to a GIL switch interval
    (5 ms) to get the interpreter back, slowing every stream many times over meanwhile.
    """

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._vocab = vocab
        ends = {llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab)}
        self.ends = np.array(sorted(t for t in ends if 0 <= t < self.n_vocab), dtype=np.int64)
        self._buffers = {
            name: np.zeros(size, dtype=_TOKEN_DATA)
            for name, size in (("some", self.n_vocab), ("probe", self.n_vocab), ("one", 1))
        }
        self._pointers = {
            name: buffer.ctypes.data_as(llama_cpp.llama_token_data_p) for name, buffer in self._buffers.items()
        }
        self._arrays = {name: llama_cpp.llama_token_data_array() for name in self._buffers}
        self._sizes = dict.fromkeys(self._buffers, 0)
        self._logits_type = ctypes.c_float * self.n_vocab
        self.logits: npt.NDArray[np.float32] = np.zeros(self.n_vocab, dtype=np.float32)
        self._index: PrefixIndex | None = None
        self._flags = np.zeros(self.n_vocab + 1, dtype=np.bool_)
        self._flags[-1] = True

    @property
    def index(self) -> PrefixIndex:
        if self._index is None:
            self._index = PrefixIndex.build(self._vocab, self.n_vocab, self.ends)
        return self._index

    def prepare(self) -> None:
        """Build what constrained sampling needs now rather than in the middle of a step."""
        _ = self.index

    def _array(self, name: str, size: int) -> llama_cpp.llama_token_data_array:
        array = self._arrays[name]
        self._sizes[name] = size
        array.data = self._pointers[name]  # type: ignore[assignment]  # the binding types it as an array; it is a pointer
        array.size = size
        array.selected = -1
        array.sorted = False
        return array

    def load(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> None:
        """Take the logits of one output of the last decode (a view: valid until the next decode)."""
        pointer = llama_cpp.llama_get_logits_ith(ctx, batch_index)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        assert address, "no logits for this batch index"
        self.logits = np.frombuffer(self._logits_type.from_address(address), dtype=np.float32)

    def some(self, ids: IntArray) -> llama_cpp.llama_token_data_array:
        """These tokens with their logits."""
        size = len(ids)
        buffer = self._buffers["some"]
        buffer["id"][:size] = ids
        buffer["logit"][:size] = self.logits[ids]
        buffer["p"][:size] = 0.0
        return self._array("some", size)

    def single(self, token: int) -> llama_cpp.llama_token_data_array:
        """One token, for a grammar to judge (its logit does not matter)."""
        self._buffers["one"][0] = (token, 0.0, 0.0)
        return self._array("one", 1)

    def passing(self, grammar: GrammarSampler, tokens: IntArray) -> IntArray:
        """Which of these tokens the grammar allows here."""
        size = len(tokens)
        buffer = self._buffers["probe"]
        buffer["id"][:size] = tokens
        buffer["logit"][:size] = 0.0
        grammar.apply(self._array("probe", size))
        return tokens[buffer["logit"][:size] != -np.inf]

    def _passed(self, grammar: GrammarSampler, probes: IntArray, groups: IntArray) -> npt.NDArray[np.bool_]:
        """Per group: whether its probe (in `groups`, -1 for none) passes; a group without one passes."""
        flags = self._flags  # per token, and a last entry (index -1) for "no probe"
        passed = self.passing(grammar, probes)
        flags[passed] = True
        result = flags[groups]
        flags[passed] = False
        return result

    def reachable(self, grammar: GrammarSampler) -> npt.NDArray[np.bool_]:
        """Per token: whether the grammar may allow it here (a superset; see the module docstring)."""
        index = self.index
        first_ok = self._passed(grammar, index.first_probes, index.first_probe)
        second = np.unique(index.second_probe[first_ok & (index.second_probe >= 0)])
        open_groups = np.append(first_ok & self._passed(grammar, second, index.second_probe), False)
        mask = open_groups[index.group_of]  # the extra entry of open_groups: tokens with no text
        mask[self.ends] = True
        return mask

    def likeliest(self, among: npt.NDArray[np.bool_]) -> IntArray:
        """The RESCUE_CANDIDATES tokens with the highest logits among these."""
        n = min(RESCUE_CANDIDATES, self.n_vocab)
        top = np.argpartition(self.logits, self.n_vocab - n)[self.n_vocab - n :]
        return top[among[top]]

    def visible(self, token: int) -> bool:
        """False for a token with no text (a control token) that does not end the generation.

        llama.cpp's grammar reads control tokens by their names ("<|im_start|>") and may let
        one into a string, but the answer's text never shows them: the grammar and the text
        would part. Such a token counts as refused.
        """
        return bool(self.index.visible[token])

    def any_allowed(self, array: llama_cpp.llama_token_data_array) -> bool:
        """Whether a grammar left any token of this array possible (grammars edit logits in place)."""
        name = next(key for key, value in self._arrays.items() if value is array)
        return bool((self._buffers[name]["logit"][: self._sizes[name]] != -np.inf).any())

    @staticmethod
    def selected(array: llama_cpp.llama_token_data_array) -> int:
        return int(array.data[array.selected].id)


@dataclass
class GrammarSampler:
    """A request's llama.cpp grammar sampler, kept outside its chain; owned by the request."""

    handle: llama_cpp.llama_sampler_p

    def allows(self, candidates: Candidates, token: int) -> bool:
        array = candidates.single(token)
        self.apply(array)
        return bool(array.data[0].logit != -np.inf)

    def apply(self, array: llama_cpp.llama_token_data_array) -> None:
        """Set the logit of every token the grammar refuses here to -inf."""
        llama_cpp.llama_sampler_apply(self.handle, ctypes.byref(array))

    def accept(self, token: int) -> None:
        """Advance the grammar; only for a token it allows (llama.cpp aborts on any other)."""
        llama_cpp.llama_sampler_accept(self.handle, token)

    def free(self) -> None:
        if self.handle:
            llama_cpp.llama_sampler_free(self.handle)
            self.handle = None  # type: ignore[assignment]  # None once freed, so a second free() does nothing


def _rescue(grammar: GrammarSampler, candidates: Candidates) -> llama_cpp.llama_token_data_array:
    """Candidates holding at least one token the grammar allows, the others at -inf."""
    reachable = candidates.reachable(grammar)
    if np.count_nonzero(reachable) > EXACT_LIMIT:
        likeliest = candidates.likeliest(reachable)
        if len(likeliest):
            array = candidates.some(likeliest)
            grammar.apply(array)
            if candidates.any_allowed(array):
                return array
    array = candidates.some(np.flatnonzero(reachable))
    grammar.apply(array)
    if not candidates.any_allowed(array):
        raise GrammarStuck("the grammar allows no token here")
    return array


def resample(
    chain: llama_cpp.llama_sampler_p,
    grammar: GrammarSampler,
    candidates: Candidates,
    ctx: llama_cpp.llama_context_p,
    batch_index: int,
) -> int:
    """Sample among the tokens the grammar allows (step 3); the chain accepts it, the grammar not yet."""
    candidates.load(ctx, batch_index)
    array = _rescue(grammar, candidates)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
    token = candidates.selected(array)
    if not grammar.allows(candidates, token):
        raise GrammarStuck(f"the sampler chose token {token}, which the grammar refuses")
    llama_cpp.llama_sampler_accept(chain, token)
    return token
