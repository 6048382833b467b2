"""The dashboard's live parts in headless chromium, against the real server and the real model:
a chat answer streams into the page and Stop ends it on the server; a pull shows its progress to
the end; the overview's charts receive data as requests are served.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from tests.conftest import DEFAULT_MODEL
from tests.dashboard.conftest import Dashboard, UiPage

pytestmark = pytest.mark.slow

# Records every value the progress bar's data-percent takes, so a test can see it move.
_WATCH_PROGRESS = """() => {
  window.__percents = [];
  const bar = document.querySelector('[data-testid="pull-progress"]');
  new MutationObserver(() => window.__percents.push(Number(bar.dataset.percent)))
    .observe(bar, { attributes: true, attributeFilter: ["data-percent"] });
}"""


def _stats(dashboard: Dashboard) -> dict:
    with dashboard.client() as client:
        return client.get("/admin/stats").json()


def test_chat_streams_and_stop_frees_the_slot(ui: UiPage, dashboard: Dashboard) -> None:
    ui.open("#/chat")
    page = ui.page
    expect(page.get_by_test_id("chat-model").locator(f'option[value="{DEFAULT_MODEL}"]')).to_have_count(1)
    page.get_by_test_id("chat-model").select_option(DEFAULT_MODEL)

    # A short answer first: it streams to its end with its figures (greedy: the same words each run).
    page.get_by_test_id("chat-temperature").fill("0")
    page.get_by_test_id("chat-temperature").dispatch_event("change")
    page.get_by_test_id("chat-max-tokens").fill("12")
    page.get_by_test_id("chat-max-tokens").dispatch_event("change")
    page.get_by_test_id("chat-input").fill("Say hello.")
    page.get_by_test_id("chat-send").click()
    stats = page.get_by_test_id("chat-stats").last
    expect(stats).to_contain_text("TTFT", timeout=30_000)
    expect(page.get_by_test_id("chat-answer").last).not_to_be_empty()

    # A long one, stopped after its first words.
    page.get_by_test_id("chat-max-tokens").fill("400")
    page.get_by_test_id("chat-max-tokens").dispatch_event("change")
    page.get_by_test_id("chat-input").fill("Write a very long story about a dragon and a castle.")
    page.get_by_test_id("chat-send").click()
    stop = page.get_by_test_id("chat-stop")
    expect(stop).to_be_visible()
    answer = page.get_by_test_id("chat-answer").last
    expect(answer).to_have_text(re.compile(r"\S+\s+\S+"), timeout=30_000)  # a few words in
    streamed = answer.inner_text()
    time.sleep(0.3)
    assert len(answer.inner_text()) >= len(streamed)  # still growing, not painted at the end
    stop.click()
    expect(stop).to_be_hidden()
    expect(page.get_by_test_id("chat-stats").last).to_contain_text("stopped")
    ui.shot("chat-stopped")
    stopped_at = answer.inner_text()
    time.sleep(0.5)
    assert answer.inner_text() == stopped_at  # nothing arrives after Stop

    # The server let go of the request: its slot is free and the next answer comes at once.
    deadline = time.monotonic() + 5
    while _stats(dashboard)["slots_busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stats(dashboard)["slots_busy"] == 0
    started = time.monotonic()
    with dashboard.client() as client:
        quick = client.post(
            "/v1/chat/completions",
            json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        )
    assert quick.status_code == 200
    assert time.monotonic() - started < 10


class _SlowFile(http.server.BaseHTTPRequestHandler):
    """Serves one file in 64 KiB pieces at about 2 MB/s, so a pull takes a couple of seconds."""

    file: Path

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        data = self.file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for at in range(0, len(data), 65536):
            try:
                self.wfile.write(data[at : at + 65536])
            except OSError:
                return
            time.sleep(0.03)


@pytest.fixture
def slow_gguf(tmp_path: Path) -> Iterator[str]:
    """A URL on loopback for a small real GGUF (4 MiB: it parses in milliseconds)."""
    import gguf
    import numpy as np

    path = tmp_path / "tiny-dash.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-dash")
    writer.add_context_length(256)
    writer.add_embedding_length(8)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<s>", "</s>", "a"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_tensor("token_embd.weight", np.zeros((131072, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    handler = type("Handler", (_SlowFile,), {"file": path})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tiny-dash.gguf"
    finally:
        server.shutdown()
        server.server_close()


def test_pull_shows_progress_to_the_end(ui: UiPage, dashboard: Dashboard, slow_gguf: str) -> None:
    ui.open("#/models")
    page = ui.page
    expect(page.get_by_test_id(f"model-{DEFAULT_MODEL}")).to_be_visible()
    page.evaluate(_WATCH_PROGRESS)
    page.get_by_test_id("pull-name").fill(slow_gguf)
    page.get_by_test_id("pull-destination").fill("dash-pulled")
    page.get_by_test_id("pull-start").click()
    progress = page.get_by_test_id("pull-progress")
    expect(progress).to_have_attribute("data-done", "true", timeout=60_000)
    expect(progress).to_have_attribute("data-percent", "100")
    expect(page.get_by_test_id("pull-status")).to_contain_text("pulled")
    seen = page.evaluate("window.__percents")
    assert any(0 < p < 100 for p in seen), f"no progress between 0 and 100 was shown: {seen}"
    assert seen == sorted(seen), f"the bar went backwards: {seen}"
    expect(page.get_by_test_id("model-dash-pulled:latest")).to_be_visible()
    ui.shot("models-pulled")
    with dashboard.client() as client:
        names = [m["name"] for m in client.get("/api/tags").json()["models"]]
        assert "dash-pulled:latest" in names
        client.request("DELETE", "/api/delete", json={"model": "dash-pulled"})


def test_overview_charts_receive_data(ui: UiPage, dashboard: Dashboard) -> None:
    ui.open("#/overview")
    page = ui.page
    before = int(page.get_by_test_id("chart-requests").get_attribute("data-points") or 0)

    def traffic() -> None:
        with dashboard.client() as client:
            for _ in range(3):
                client.post(
                    "/v1/chat/completions",
                    json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                )

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        for name in ("tokens", "requests", "ttft", "errors"):
            chart = page.get_by_test_id(f"chart-{name}")
            expect(chart).not_to_have_attribute("data-points", "0", timeout=15_000)
            expect(chart.locator("canvas")).to_have_count(1)
        # Points keep arriving (one a second) while the page is open.
        deadline = time.monotonic() + 10
        while int(page.get_by_test_id("chart-requests").get_attribute("data-points") or 0) < before + 3:
            assert time.monotonic() < deadline, "the overview's charts stopped receiving points"
            time.sleep(0.2)
    finally:
        worker.join()
    expect(page.get_by_test_id(f"loaded-{DEFAULT_MODEL}")).to_be_visible()
    requests = int(page.get_by_test_id("stat-requests").inner_text().replace(",", "") or 0)
    assert requests >= 3
    ui.shot("overview-live")
    assert httpx.get(dashboard.url("/admin/stats")).status_code == 401  # the page's figures need the key
