"""The gateway's parts on their own: config errors, breaker states, strategy orders."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.errors import ConfigError
from ember.gateway.breaker import CircuitBreaker
from ember.gateway.config import BreakerConfig, GatewayConfig, ProviderConfig, RouteConfig, load_gateway_config
from ember.gateway.strategies import STRATEGIES
from ember.gateway.strategies.auto import is_demanding
from ember.gateway.strategies.weighted import weighted
from ember.gateway.target import Target
from ember.services.types import ChatMessage, RequestContext, TextRequest, Tool

GOOD = """
log_level = "info"

[[providers]]
name = "backup"
kind = "openai"
base_url = "http://127.0.0.1:8001/v1"
api_key_env = "BACKUP_API_KEY"
price_in = 0.15
price_out = 0.60

[[routes]]
model = "chat"
targets = ["local/smollm2:135m", "backup/gpt-4o-mini"]
strategy = "fallback"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ember.toml"
    path.write_text(text)
    return path


def test_the_issue_example_loads(tmp_path: Path) -> None:
    config = load_gateway_config(write(tmp_path, GOOD))
    assert [p.name for p in config.providers] == ["backup"]
    assert config.routes[0].targets == ["local/smollm2:135m", "backup/gpt-4o-mini"]
    assert config.providers[0].price_out == 0.60


@pytest.mark.parametrize(("tail", "line", "words"), [
    ('\n[[routes]]\nmodel = "x"\ntargets = ["local/a"]\nstrategy = "bogus"\n', 20, "strategy"),
    ('\n[[routes]]\nmodel = "x"\ntargets = ["nobody/a"]\n', 19, "no provider 'nobody'"),
    ('\n[[routes]]\nmodel = "x"\ntargets = ["no-slash"]\n', 19, "provider/model"),
    ('\n[[routes]]\nmodel = "x"\ntargets = ["local/a"]\nstrategy = "weighted"\n', 17, "weights"),
    ('\n[[routes]]\nmodel = "chat"\ntargets = ["local/a"]\n', None, "defined twice"),
    ('\n[[providers]]\nname = "p"\nkind = "openai"\n', 17, "needs base_url"),
    ('\n[[routes]]\nmodel = "x"\ntargets = ["local/a"]\ncolour = "red"\n', 20, "colour"),
    ('\n[[providers]]\nname = "l1"\nkind = "local"\n\n[[providers]]\nname = "l2"\nkind = "local"\n', 23,
     "only one provider may be of kind local"),
])
def test_a_bad_config_names_file_line_and_problem(tmp_path: Path, tail: str, line: int | None,
                                                  words: str) -> None:
    path = write(tmp_path, GOOD + tail)
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    message = caught.value.message
    assert message.startswith(f"{path}:{line}:" if line else str(path)), message
    assert words in message


def test_a_misspelt_setting_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'num_paralel = 2\n' + GOOD)
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert caught.value.message.startswith(f"{path}:1: num_paralel: not a setting")


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2"):
        load_gateway_config(write(tmp_path, '[[routes]]\nmodel = \n'))


def test_serve_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '\n[[routes]]\nmodel = "x"\ntargets = ["local/a"]\nstrategy = "bogus"\n')
    from tests.conftest import free_port

    result = subprocess.run(
        [sys.executable, "-m", "ember", "serve"], capture_output=True, text=True, timeout=60,
        env={"EMBER_CONFIG": str(path), "EMBER_HOME": str(tmp_path / "home"),
             "EMBER_HOST": f"127.0.0.1:{free_port()}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"Error: {path}:20: routes[1].strategy: "
                                                  "Input should be 'fallback', 'race', 'cheapest', 'fastest', "
                                                  "'least-busy', 'weighted', 'auto' or 'fleet'"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_failures_and_half_opens_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(failures=3, cooldown=10), clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 9.9
    assert not breaker.allow() and breaker.retry_in() == pytest.approx(0.1)
    clock.now = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # no second probe while it runs
    breaker.failure()  # the probe failed: open again, a new cool-down
    assert breaker.state == "open"
    clock.now = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(BreakerConfig(failures=2, cooldown=1))
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == "closed"


@dataclass
class FakeProvider:
    """Only what the strategies read: a name and prices (no requests are sent)."""

    config: ProviderConfig

    @property
    def name(self) -> str:
        return self.config.name


def targets(*specs: tuple[str, float, float]) -> list[Target]:
    out = []
    for label, price_in, price_out in specs:
        provider, _, model = label.partition("/")
        config = ProviderConfig(name=provider, kind="openai", base_url="http://127.0.0.1:1/v1",
                                price_in=price_in, price_out=price_out)
        out.append(Target(provider=FakeProvider(config), model=model,  # type: ignore[arg-type]
                          breaker=CircuitBreaker(BreakerConfig())))
    return out


def request(text: str = "hi", max_tokens: int | None = 16, *, tools: bool = False, **context: object) -> TextRequest:
    return TextRequest(model="r", messages=[ChatMessage("user", text)], max_tokens=max_tokens,
                       tools=(Tool(name="lookup"),) if tools else (),
                       context=RequestContext(**context))  # type: ignore[arg-type]


def labels(order: list[Target]) -> list[str]:
    return [t.label for t in order]


def route(strategy: str, ts: list[Target], **extra: object) -> RouteConfig:
    return RouteConfig(model="r", targets=[t.label for t in ts], strategy=strategy, **extra)  # type: ignore[arg-type]


def test_cheapest_orders_by_estimated_cost() -> None:
    ts = targets(("a/x", 5.0, 15.0), ("b/y", 0.15, 0.6), ("c/z", 0.0, 0.0))
    assert labels(STRATEGIES["cheapest"](ts, route("cheapest", ts), request())) == ["c/z", "b/y", "a/x"]


def test_fastest_tries_unmeasured_targets_then_the_lowest_ttft() -> None:
    ts = targets(("a/x", 0, 0), ("b/y", 0, 0), ("c/z", 0, 0))
    ts[0].observe(300.0, 10, 1.0)
    ts[1].observe(50.0, 10, 1.0)
    assert labels(STRATEGIES["fastest"](ts, route("fastest", ts), request())) == ["c/z", "b/y", "a/x"]
    ts[2].observe(100.0, 10, 1.0)
    assert labels(STRATEGIES["fastest"](ts, route("fastest", ts), request())) == ["b/y", "c/z", "a/x"]


def test_least_busy_orders_by_requests_in_flight() -> None:
    ts = targets(("a/x", 0, 0), ("b/y", 0, 0), ("c/z", 0, 0))
    ts[0].in_flight, ts[1].in_flight, ts[2].in_flight = 3, 0, 1
    assert labels(STRATEGIES["least-busy"](ts, route("least-busy", ts), request())) == ["b/y", "c/z", "a/x"]


def test_weighted_leads_in_proportion_to_weight() -> None:
    ts = targets(("a/x", 0, 0), ("b/y", 0, 0))
    config = route("weighted", ts, weights=[3.0, 1.0])
    rng = random.Random(7)
    firsts = [weighted(ts, config, request(), rng=rng)[0].label for _ in range(4000)]
    share = firsts.count("a/x") / len(firsts)
    assert 0.72 < share < 0.78
    assert sorted(labels(weighted(ts, config, request(), rng=rng))) == ["a/x", "b/y"]


def test_auto_sends_short_requests_to_small_and_demanding_ones_to_strong() -> None:
    ts = targets(("local/small", 0, 0), ("cloud/big", 1, 2))
    config = route("auto", ts, auto={"small": "local/small", "strong": "cloud/big",
                                     "max_prompt_chars": 100, "max_tokens": 64})
    order = STRATEGIES["auto"]
    assert labels(order(ts, config, request("hello", 16))) == ["local/small", "cloud/big"]
    assert labels(order(ts, config, request("x" * 101, 16))) == ["cloud/big", "local/small"]
    assert labels(order(ts, config, request("hello", 65))) == ["cloud/big", "local/small"]
    assert labels(order(ts, config, request("hello", None))) == ["cloud/big", "local/small"]
    assert labels(order(ts, config, request("hello", 16, tools=True))) == ["cloud/big", "local/small"]
    assert labels(order(ts, config, request("hello", 16, priority="HIGH"))) == ["cloud/big", "local/small"]
    assert config.auto is not None and not is_demanding(config.auto, request("hello", 16, priority="low"))


def test_auto_targets_must_be_route_targets() -> None:
    with pytest.raises(ValueError, match="not one of the route's targets"):
        GatewayConfig.model_validate({"routes": [{"model": "r", "targets": ["local/a"], "strategy": "auto",
                                                  "auto": {"small": "local/a", "strong": "local/b"}}]})
