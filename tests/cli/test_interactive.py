"""`ember run MODEL` on a terminal: the interactive chat, driven through a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from .conftest import cli_env
from .helpers import FAST, MODEL

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


class Terminal:
    """A child process whose stdin and stdout are a pty, read and written like a user would."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 120) -> str:
        """Read until `text` appears after what earlier calls consumed; returns what came before it."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"did not see {text!r} in {self.seen!r}")
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
        before, _, self.seen = self.seen.partition(text)
        return before

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            os.close(self.master)


@pytest.fixture
def chat(server):
    terminal = Terminal([sys.executable, "-m", "ember", "run", MODEL, *FAST], env=cli_env(server.env))
    yield terminal
    if terminal.process.poll() is None:
        terminal.process.kill()
        terminal.close()


def test_chat_answers_clears_and_exits_on_bye(chat: Terminal) -> None:
    chat.expect(">>> ")
    chat.send("Hello, who are you?\r")
    answer = chat.expect(">>> ")
    assert answer.replace("Hello, who are you?", "").strip()
    chat.send("/clear\r")
    chat.expect("Cleared session context")
    chat.expect(">>> ")
    chat.send("/bye\r")
    assert chat.close() == 0


def test_chat_exits_on_ctrl_d(chat: Terminal) -> None:
    chat.expect(">>> ")
    chat.send("\x04")
    assert chat.close() == 0
