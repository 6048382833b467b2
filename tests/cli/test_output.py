"""The CLI's formatting helpers: pure functions, checked against Ollama's wording."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from ember.cli.client import error_message
from ember.cli.doctor import cpu_features
from ember.cli.output import PlainPullView, PullEvent, human_size, parse_time, relative_time, short_digest

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_human_size_uses_decimal_units() -> None:
    assert human_size(512) == "512 B"
    assert human_size(98_000_000) == "98 MB"
    assert human_size(1_300_000_000) == "1.3 GB"
    assert human_size(None) == "-"


def test_relative_time_words() -> None:
    assert relative_time(NOW - timedelta(minutes=3), NOW) == "3 minutes ago"
    assert relative_time(NOW - timedelta(seconds=90), NOW) == "About a minute ago"
    assert relative_time(NOW - timedelta(days=3), NOW) == "3 days ago"
    assert relative_time(NOW + timedelta(minutes=4, seconds=30), NOW) == "4 minutes from now"
    assert relative_time(None, NOW) == "-"


def test_parse_time_accepts_go_nanoseconds_and_z() -> None:
    moment = parse_time("2025-01-01T12:00:00.123456789Z")
    assert moment == datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert parse_time("2025-01-01T13:00:00+01:00") == NOW
    assert parse_time("yesterday") is None


def test_short_digest() -> None:
    assert short_digest("sha256:" + "ab" * 32) == "abababababab"
    assert short_digest(None) == "-"


def test_plain_pull_view_prints_at_most_one_line_per_five_percent() -> None:
    out = io.StringIO()
    with PlainPullView(out) as view:
        view.update(PullEvent("pulling manifest"))
        for done in range(0, 1001):
            view.update(PullEvent("pulling abc", digest="sha256:abc", total=1000, completed=done))
        view.update(PullEvent("verifying sha256 digest"))
        view.update(PullEvent("success"))
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if line.startswith("pulling abc")]
    assert len(progress) == 21  # 0%, 5%, ... 100%
    assert progress[-1].startswith("pulling abc 100%")
    assert lines[0] == "pulling manifest" and lines[-2:] == ["verifying sha256 digest", "success"]


def test_pull_event_from_store_progress_object() -> None:
    class Progress:
        status = "pulling x"
        digest = "sha256:1"
        total = 10
        completed = 5

    assert PullEvent.from_any(Progress()) == PullEvent("pulling x", "sha256:1", 10, 5)
    assert PullEvent.from_any({"status": "success"}) == PullEvent("success")


def test_error_message_reads_every_error_shape() -> None:
    assert error_message({"error": "model 'x' not found"}, "?") == "model 'x' not found"
    assert error_message({"error": {"message": "bad key"}}, "?") == "bad key"
    assert error_message({"detail": [{"loc": ["body", "model"], "msg": "Field required"}]}, "?") == "model: Field required"
    assert error_message(None, "fallback") == "fallback"


def test_cpu_features_keeps_simd_flags_that_are_on() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | FMA = 1 | NEON = 0 | AVX512_VNNI = 1 |"
    assert cpu_features(info) == ["AVX", "AVX2", "AVX512_VNNI"]
