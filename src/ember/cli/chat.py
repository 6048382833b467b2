"""`ember run`: one answer streamed to stdout, or an interactive chat; works without a server."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Annotated, Any, TextIO

import typer

from ember.cli.client import EmberClient, ServerError, ServerUnreachable
from ember.cli.inprocess import local_server
from ember.cli.pull import pull_via_server
from ember.config import Settings
from ember.errors import EmberError

_HELP = """Available commands:
  /clear    Clear the conversation
  /bye      Exit
  /?        Show this help
Use \"\"\" to begin and end a multi-line message. Ctrl-D also exits."""

_MULTILINE = '"""'


@dataclass
class ChatSession:
    """The conversation so far and the fixed parts of every request."""

    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def request(self, prompt: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [*self.history, {"role": "user", "content": prompt}]
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.options:
            body["options"] = self.options
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def remember(self, prompt: str, answer: str) -> None:
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def stream_answer(client: EmberClient, body: dict[str, Any], out: TextIO) -> tuple[str, dict[str, Any]]:
    """Write the reply to `out` as it arrives; returns the whole text and the final (done) event."""
    parts: list[str] = []
    final: dict[str, Any] = {}
    for event in client.chat(body):
        content = (event.get("message") or {}).get("content") or ""
        if content:
            out.write(content)
            out.flush()
            parts.append(content)
        if event.get("done"):
            final = event
    out.write("\n")
    out.flush()
    return "".join(parts), final


def print_stats(final: dict[str, Any], stream: TextIO) -> None:
    """Timings as `ollama run --verbose` prints them (durations arrive in nanoseconds)."""

    def seconds(key: str) -> float:
        return float(final.get(key) or 0) / 1e9

    lines = [f"total duration:       {seconds('total_duration'):.3f}s"]
    lines.append(f"load duration:        {seconds('load_duration'):.3f}s")
    for label, count_key, time_key in (
        ("prompt eval", "prompt_eval_count", "prompt_eval_duration"),
        ("eval", "eval_count", "eval_duration"),
    ):
        count = int(final.get(count_key) or 0)
        lines.append(f"{label + ' count:':<22}{count} token(s)")
        if seconds(time_key) > 0:
            lines.append(f"{label + ' rate:':<22}{count / seconds(time_key):.2f} tokens/s")
    print("\n".join(lines), file=stream)


@contextmanager
def connect(settings: Settings) -> Iterator[EmberClient]:
    """A client of the running server, or of a private one started here if none answers."""
    client = EmberClient.from_settings(settings)
    try:
        client.version()
    except ServerUnreachable:
        client.close()
    else:
        with client:
            yield client
        return
    with local_server(settings) as base_url, EmberClient(base_url) as local:
        yield local


def ensure_model(client: EmberClient, model: str) -> None:
    """Pull the model first if the store lacks it, as `ollama run` does."""
    try:
        client.show(model)
    except ServerError as exc:
        if exc.status_code != 404:
            raise
        # Progress goes to stderr: stdout is for the answer.
        pull_via_server(client, model, destination=None, stream=sys.stderr)


def _read_message() -> str:
    """One user message; a line starting with \"\"\" continues until a line ending with it."""
    line = input(">>> ")
    if not line.lstrip().startswith(_MULTILINE):
        return line
    text = line.lstrip()[len(_MULTILINE) :]
    lines = [text]
    while not lines[-1].rstrip().endswith(_MULTILINE):
        lines.append(input("... "))
    lines[-1] = lines[-1].rstrip()[: -len(_MULTILINE)]
    return "\n".join(lines).strip("\n")


def interactive(client: EmberClient, session: ChatSession, *, verbose: bool) -> None:
    with suppress(ImportError):
        importlib.import_module("readline")  # for its side effect: line editing and history in input()
    while True:
        try:
            prompt = _read_message()
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        command = prompt.strip()
        if not command:
            continue
        if command in ("/bye", "/exit"):
            return
        if command == "/clear":
            session.history.clear()
            print("Cleared session context")
            continue
        if command in ("/?", "/help"):
            print(_HELP)
            continue
        if command.startswith("/") and " " not in command:
            print(f"Unknown command '{command}'. Type /? for help")
            continue
        try:
            answer, final = stream_answer(client, session.request(prompt), sys.stdout)
        except KeyboardInterrupt:
            # Stop this answer only; closing the stream tells the server to stop generating.
            print()
            continue
        session.remember(prompt, answer)
        if verbose:
            print_stats(final, sys.stderr)
        print()


def run(
    model: Annotated[str, typer.Argument(help="Model name, e.g. smollm2:135m; pulled first if missing.")],
    prompt: Annotated[
        str | None, typer.Argument(help="Ask this and exit. Without it: chat, or read stdin if piped.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="System message.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed, for repeatable answers.")] = None,
    num_predict: Annotated[int | None, typer.Option("--num-predict", help="Most tokens to generate.")] = None,
    keep_alive: Annotated[
        str | None, typer.Option("--keep-alive", help="How long the model stays loaded after, e.g. 5m, 0, -1.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print timings after each answer (to stderr).")] = False,
) -> None:
    """Answer a prompt with a model, or chat with it interactively."""
    options = {"temperature": temperature, "seed": seed, "num_predict": num_predict}
    session = ChatSession(
        model=model,
        system=system,
        options={key: value for key, value in options.items() if value is not None},
        keep_alive=keep_alive,
    )
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise EmberError("no prompt: give one as an argument or on stdin")
    with connect(Settings()) as client:
        ensure_model(client, model)
        if prompt is None:
            interactive(client, session, verbose=verbose)
            return
        _, final = stream_answer(client, session.request(prompt), sys.stdout)
        if verbose:
            print_stats(final, sys.stderr)
