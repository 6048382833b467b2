"""FleetRouter and the prefix tree: pure, so tested directly (no servers)."""

from __future__ import annotations

import pytest

from ember.fleet.prefix_tree import NodePrefixes, PrefixConfig, PrefixTree, block_hashes
from ember.fleet.routing import FleetRouter, RoutingPolicy
from ember.fleet.types import NodeInfo, NodeLoad

MODEL = "smollm2:135m"
SYSTEM = "You are a careful assistant for the ember project. " * 4  # ~200 chars: 6 blocks


def node(
    name: str,
    *,
    busy: int = 0,
    queue: int = 0,
    slots: int = 4,
    tier: str | None = None,
    resident: bool = True,
    models: tuple[str, ...] = (MODEL,),
) -> NodeInfo:
    return NodeInfo(
        node_id=f"id-{name}",
        name=name,
        kind="ember",
        base_url=f"http://127.0.0.1:1/{name}",
        labels={"tier": tier} if tier else {},
        resident=frozenset(models) if resident else frozenset(),
        stored=frozenset(models),
        load=NodeLoad(slots=slots, busy=busy, queue=queue),
    )


def names(nodes: list[NodeInfo]) -> list[str]:
    return [n.name for n in nodes]


def test_block_hashes_chain_and_whole_blocks_only() -> None:
    config = PrefixConfig(block_chars=4)
    a = block_hashes(MODEL, "abcdefghij", config)
    assert len(a) == 2  # "ij" is a partial block
    b = block_hashes(MODEL, "abcdXXXXij", config)
    assert a[0] == b[0] and a[1] != b[1]
    # Block 1 is the same text in both, but its hash covers block 0 too.
    c = block_hashes(MODEL, "zzzzefgh", config)
    assert c[1] != a[1]
    assert block_hashes("other", "abcdefgh", config) != a  # one model's cache is not another's
    assert block_hashes(MODEL, "abcdefghij", config) == a  # stable


def test_match_counts_leading_blocks() -> None:
    tree = PrefixTree(PrefixConfig(block_chars=4))
    tree.add("n1", tree.hashes(MODEL, "aaaabbbbcccc"))
    assert tree.match("n1", tree.hashes(MODEL, "aaaabbbbcccc")) == 3
    assert tree.match("n1", tree.hashes(MODEL, "aaaabbbbdddd")) == 2
    assert tree.match("n1", tree.hashes(MODEL, "xxxxbbbbcccc")) == 0
    assert tree.match("n2", tree.hashes(MODEL, "aaaabbbbcccc")) == 0


def test_memory_is_bounded_and_the_shared_head_is_evicted_last() -> None:
    prefixes = NodePrefixes(max_blocks=10)
    config = PrefixConfig(block_chars=4)
    head = "HEADHEAD"  # 2 blocks every conversation shares
    for i in range(50):
        prefixes.add(block_hashes(MODEL, head + f"{i:04d}" * 3, config))
        assert len(prefixes) <= 10
    # The head was sent with every prompt: still there after 50 prompts through 10 slots.
    assert prefixes.match(block_hashes(MODEL, head + "zzzz", config)) == 2
    # The latest conversation is whole; an early one is gone.
    assert prefixes.match(block_hashes(MODEL, head + "0049" * 3, config)) == 5
    assert prefixes.match(block_hashes(MODEL, head + "0000" * 3, config)) == 2


def test_a_prompt_contributes_at_most_max_prompt_blocks() -> None:
    tree = PrefixTree(PrefixConfig(block_chars=2, max_prompt_blocks=5))
    tree.add("n", tree.hashes(MODEL, "x" * 1000))
    assert tree.size("n") == 5


def test_longest_prefix_wins() -> None:
    router = FleetRouter()
    a, b, c = node("a"), node("b"), node("c")
    conversation = SYSTEM + "user: what is a prefix cache?\n"
    router.sent(b.node_id, MODEL, conversation)
    router.finished(b.node_id)
    follow_up = conversation + "assistant: it keeps computed keys.\nuser: and then?\n"
    assert names(router.order(MODEL, follow_up, [a, b, c]))[0] == "b"
    # Another conversation with the same system prompt also shares b's head.
    router.sent(c.node_id, MODEL, "unrelated prompt " * 20)
    router.finished(c.node_id)
    assert names(router.order(MODEL, SYSTEM + "user: hello there, who are you?\n", [a, b, c]))[0] == "b"


def test_a_short_match_is_not_a_preference() -> None:
    router = FleetRouter(RoutingPolicy(min_match=0.5))
    a, b = node("a"), node("b")
    router.sent(b.node_id, MODEL, SYSTEM)
    router.finished(b.node_id)
    long_prompt = SYSTEM + "x" * 2000  # b holds ~10% of it: below min_match
    # No preference: the least loaded, then the fewest cached blocks (a has none).
    assert names(router.order(MODEL, long_prompt, [a, b])) == ["a", "b"]


def test_overloaded_prefix_node_gives_way_to_the_least_loaded() -> None:
    router = FleetRouter(RoutingPolicy(balance_abs=2, balance_rel=1.5))
    prompt = SYSTEM + "user: hi\n"
    for _ in range(1):
        router.sent("id-a", MODEL, prompt)
        router.finished("id-a")
    # Published load: a is busier than b by 3 (> 2) and more than 1.5 times: overloaded.
    a, b = node("a", busy=4, slots=16), node("b", busy=1, slots=16)
    assert names(router.order(MODEL, prompt, [a, b])) == ["b", "a"]
    # By 2 only: within the threshold, the prefix still wins.
    a = node("a", busy=3, slots=16)
    assert names(router.order(MODEL, prompt, [a, b])) == ["a", "b"]


def test_a_full_node_gives_way_to_one_with_a_free_slot() -> None:
    router = FleetRouter()
    prompt = SYSTEM + "user: hi\n"
    router.sent("id-a", MODEL, prompt)  # still in flight: a's one slot is taken
    a, b = node("a", slots=1), node("b", slots=1)
    assert names(router.order(MODEL, prompt, [a, b])) == ["b", "a"]
    router.finished("id-a")
    assert names(router.order(MODEL, prompt, [a, b])) == ["a", "b"]
    # Everyone full: the prefix is still the best bet.
    router.sent("id-a", MODEL, prompt)
    router.sent("id-b", MODEL, "something else entirely " * 10)
    assert names(router.order(MODEL, prompt, [a, b]))[0] == "a"


def test_a_stale_full_report_does_not_move_a_conversation_off_its_prefix() -> None:
    # The node's last heartbeat still counts the turn that just ended (1 of 1 slot busy); this
    # router has nothing in flight there, so the conversation's next turn stays with its cache.
    router = FleetRouter()
    prompt = SYSTEM + "user: hi\n"
    router.sent("id-a", MODEL, prompt)
    router.finished("id-a")
    a, b = node("a", busy=1, slots=1), node("b", slots=1)
    assert names(router.order(MODEL, prompt + "assistant: hello\nuser: more\n", [a, b])) == ["a", "b"]


def test_load_is_published_or_in_flight_whichever_is_more() -> None:
    router = FleetRouter()
    n = node("a", busy=1, queue=1)
    assert router.load(n) == 2
    for _ in range(3):
        router.sent(n.node_id, MODEL, "p")
    assert router.load(n) == 3
    # An outside count (the gateway's Targets) replaces the router's own.
    outside = FleetRouter(in_flight=lambda node_id: 7)
    outside.sent(n.node_id, MODEL, "p")
    assert outside.load(n) == 7


def test_no_prefix_least_loaded_then_deterministic_ties() -> None:
    router = FleetRouter()
    a, b, c = node("a", busy=2), node("b", busy=0), node("c", busy=0)
    assert names(router.order(MODEL, "short", [a, b, c])) == ["b", "c", "a"]
    assert names(router.order(MODEL, "short", [c, b, a])) == ["b", "c", "a"]
    # Utilisation, not raw counts: 2 of 8 slots is less busy than 1 of 2.
    big, small = node("big", busy=2, slots=8), node("small", busy=1, slots=2)
    assert names(router.order(MODEL, "short", [small, big])) == ["big", "small"]


def test_resident_before_load_needed() -> None:
    router = FleetRouter()
    prompt = SYSTEM + "user: hi\n"
    stored_only = node("cold", resident=False)
    router.sent(stored_only.node_id, MODEL, prompt)
    router.finished(stored_only.node_id)
    warm = node("warm", busy=3)
    assert names(router.order(MODEL, prompt, [stored_only, warm])) == ["warm", "cold"]


def test_tiers_filter_and_order() -> None:
    router = FleetRouter()
    edge, cloud, lab, plain = (
        node("edge", tier="edge", busy=3),
        node("cloud", tier="cloud"),
        node("lab", tier="lab"),
        node("plain"),
    )
    nodes = [cloud, lab, plain, edge]
    assert names(router.order(MODEL, "x", nodes, ("edge", "cloud"))) == ["edge", "cloud"]
    assert names(router.order(MODEL, "x", nodes, ("cloud",))) == ["cloud"]
    assert len(router.order(MODEL, "x", nodes)) == 4  # no tiers: every candidate


def test_nodes_that_do_not_serve_the_model_are_left_out() -> None:
    router = FleetRouter()
    other = node("other", models=("gemma3:270m",))
    assert names(router.order(MODEL, "x", [other, node("a")])) == ["a"]


def test_forget_drops_state() -> None:
    router = FleetRouter()
    prompt = SYSTEM + "user: hi\n"
    router.sent("id-a", MODEL, prompt)
    assert router.tree.size("id-a") > 0 and router.in_flight("id-a") == 1
    router.forget("id-a")
    assert router.tree.size("id-a") == 0 and router.in_flight("id-a") == 0
    assert router.tree.node_ids() == []
    router.finished("id-a")  # a late finish of a forgotten node does not go negative
    assert router.in_flight("id-a") == 0


def test_order_reads_only() -> None:
    router = FleetRouter()
    prompt = SYSTEM + "user: hi\n"
    router.order(MODEL, prompt, [node("a"), node("b")])
    assert router.tree.node_ids() == [] and router.in_flight("id-a") == 0


def test_policy_checks_its_values() -> None:
    with pytest.raises(ValueError):
        RoutingPolicy(min_match=1.5)
    with pytest.raises(ValueError):
        RoutingPolicy(balance_rel=0.5)
    with pytest.raises(ValueError):
        PrefixConfig(block_chars=0)
