"""An approximate prefix tree per node: which prompt heads the router sent where.

A node's KV cache is not visible from outside (llama.cpp publishes no cache events), so the
router remembers what it sent: a prompt is cut into fixed-size character blocks, hashed in a
chain (block i's hash covers the model's name and blocks 0..i, so it names a path from the
root, as a radix tree's node would), and each node keeps an LRU-capped set of those hashes. A
prompt's match on a node is the number of its leading blocks present there.

Invariants:
- Memory is bounded: at most `max_blocks` hashes per node (least recently sent evicted first),
  and one prompt contributes at most its first `max_prompt_blocks` blocks (the head is what
  conversations share; the work per request is bounded too).
- A prompt's blocks are touched last to first, so a shared head is always more recent than the
  tails that hang off it and is evicted after them (a radix tree evicts leaves first).
- A trailing partial block is not counted: only whole blocks are hashed.
- Hashes are 64-bit blake2b digests, the same in every process (the fleet simulator and the
  gateway agree on them).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefixConfig:
    block_chars: int = 32  # ~8 tokens of English per block
    max_blocks: int = 16384  # per node: ~512k characters of prompts (~1.5 MB of table)
    max_prompt_blocks: int = 1024  # a prompt's first 32k characters

    def __post_init__(self) -> None:
        if self.block_chars < 1 or self.max_blocks < 1 or self.max_prompt_blocks < 1:
            raise ValueError("block_chars, max_blocks and max_prompt_blocks must be at least 1")


def block_hashes(model: str, text: str, config: PrefixConfig) -> list[int]:
    """The chained hashes of `text`'s whole blocks (at most max_prompt_blocks of them)."""
    size = config.block_chars
    count = min(len(text) // size, config.max_prompt_blocks)
    chain = hashlib.blake2b(model.encode(), digest_size=8)
    chain.update(b"\x00")  # the model's name ends here: "a" + "bc..." is not "ab" + "c..."
    hashes: list[int] = []
    for i in range(count):
        chain.update(text[i * size : (i + 1) * size].encode())
        hashes.append(int.from_bytes(chain.copy().digest(), "little"))
    return hashes


class NodePrefixes:
    """One node's block hashes, oldest-sent first."""

    def __init__(self, max_blocks: int) -> None:
        self._max = max_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of the prompt this node holds (reads only: no LRU touch)."""
        for i, h in enumerate(hashes):
            if h not in self._blocks:
                return i
        return len(hashes)

    def add(self, hashes: Sequence[int]) -> None:
        blocks = self._blocks
        for h in reversed(hashes):  # the head last: most recent, evicted last
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        while len(blocks) > self._max:
            blocks.popitem(last=False)


class PrefixTree:
    """The prefixes of every node the router has sent prompts to."""

    def __init__(self, config: PrefixConfig | None = None) -> None:
        self.config = config or PrefixConfig()
        self._nodes: dict[str, NodePrefixes] = {}

    def hashes(self, model: str, text: str) -> list[int]:
        return block_hashes(model, text, self.config)

    def match(self, node_id: str, hashes: Sequence[int]) -> int:
        node = self._nodes.get(node_id)
        return 0 if node is None else node.match(hashes)

    def add(self, node_id: str, hashes: Sequence[int]) -> None:
        if not hashes:
            return
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = NodePrefixes(self.config.max_blocks)
        node.add(hashes)

    def size(self, node_id: str) -> int:
        """Blocks held for that node (0 for one never sent to)."""
        node = self._nodes.get(node_id)
        return 0 if node is None else len(node)

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def node_ids(self) -> list[str]:
        return list(self._nodes)
