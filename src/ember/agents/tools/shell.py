"""The `shell` built-in: one allowlisted command, run in the sandbox (sandbox.py).

Invariants:
- argv[0] is a bare name from `[tools.shell] allow`, resolved on a fixed PATH; the command is
  executed directly (no shell: no globbing, pipes, redirections or `;`).
- A command that ran and exited, whatever its exit code, is a normal outcome: the model reads
  the code and both streams. A refusal, a failure to start, a timeout or a limit hit is a tool
  error (`is_error=True`), with what was captured until then.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ember.agents.tools._args import argument_error
from ember.agents.tools.builtin_config import ShellConfig
from ember.agents.tools.sandbox import SAFE_PATH, RunResult, Sandbox, SandboxLimits, SandboxUnavailable
from ember.agents.types import ToolOutcome, ToolSpec

_MB = 1 << 20
MAX_STDIN_BYTES = 1 << 20

log = logging.getLogger(__name__)


class ShellArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1)
    stdin: str | None = None


class ShellTool:
    """Runs `argv` under the sandbox; answers JSON {exit_code, stdout, stderr, ...}."""

    def __init__(self, config: ShellConfig) -> None:
        self.config = config
        self.sandbox = Sandbox(
            SandboxLimits(
                cpu_seconds=config.cpu_seconds,
                memory_bytes=config.memory_mb * _MB,
                max_files=config.max_files,
                max_processes=config.max_processes,
                max_file_bytes=config.max_file_mb * _MB,
                timeout=config.timeout,
                max_output_bytes=config.max_output_bytes,
            ),
            config.bubblewrap,
        )
        allowed = ", ".join(config.allow)
        self._spec = ToolSpec(
            name="shell",
            description=(
                # (Not "no network": without bubblewrap there is some; the model is told what holds.)
                f"Run one command (no shell: no pipes, globs or redirections) in a sandbox, in a fresh "
                f"empty working directory, with limits on time and memory. Allowed commands: {allowed}. "
                "Answers the exit code, stdout and stderr."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "argv": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "description": 'the command and its arguments, e.g. ["ls", "-l"]',
                    },
                    "stdin": {"type": "string", "description": "text given to the command on its standard input"},
                },
                "required": ["argv"],
                "additionalProperties": False,
            },
            # The runner cancels a little after this; our own timeout fires first and kills.
            timeout=config.timeout + 5,
            require_approval=config.require_approval,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> ToolOutcome:
        try:
            args = ShellArgs.model_validate(arguments)
        except ValidationError as exc:
            return ToolOutcome(argument_error(exc), is_error=True)
        name = args.argv[0]
        if name not in self.config.allow:
            return ToolOutcome(
                f"command {name!r} is not allowed; allowed: {', '.join(self.config.allow)}", is_error=True
            )
        if any("\x00" in a for a in args.argv):
            return ToolOutcome("bad arguments: argv may not contain NUL characters", is_error=True)
        stdin = args.stdin.encode() if args.stdin is not None else None
        if stdin is not None and len(stdin) > MAX_STDIN_BYTES:
            return ToolOutcome(f"stdin is over {MAX_STDIN_BYTES} bytes", is_error=True)
        executable = shutil.which(name, path=SAFE_PATH)
        if executable is None:
            return ToolOutcome(f"command {name!r} is allowed but not installed on {SAFE_PATH}", is_error=True)
        try:
            result = await self.sandbox.run(executable, args.argv[1:], stdin)
        except SandboxUnavailable as exc:
            return ToolOutcome(str(exc), is_error=True)
        except OSError as exc:
            return ToolOutcome(f"command {name!r} could not start: {exc}", is_error=True)
        except Exception as exc:  # a bug here is the tool's failure, not the run's (types.py)
            log.exception("shell failed unexpectedly")
            return ToolOutcome(f"shell failed: {type(exc).__name__}: {exc}", is_error=True)
        return render(result, self.config.max_output_bytes)


def render(result: RunResult, cap: int) -> ToolOutcome:
    """The result as the JSON text the model reads; cut streams say how much was left out."""
    body: dict[str, Any] = {"exit_code": result.exit_code}
    if result.signal is not None:
        body["signal"] = result.signal
    if result.limit is not None:
        body["error"] = result.limit
    body["stdout"] = result.stdout
    body["stderr"] = result.stderr
    for stream, total in (("stdout", result.stdout_bytes), ("stderr", result.stderr_bytes)):
        if total > cap:
            body[f"{stream}_note"] = f"cut at {cap} of {total} bytes"
    if not result.isolated:
        body["sandbox"] = "rlimits only (no bubblewrap)"
    return ToolOutcome(json.dumps(body, ensure_ascii=False), is_error=result.limit is not None)
