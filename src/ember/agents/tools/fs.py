"""The `fs_read`, `fs_write` and `fs_list` built-ins: files under one root directory.

Invariants:
- A path is relative to the root. Its resolved real path (symlinks included; for a file not
  there yet, its parent's real path) must be the root's real path or under it, else the call is
  a tool error "outside the root". The file actually opened is checked again after opening
  (through /proc/self/fd), and the last component is opened with O_NOFOLLOW, so a symlink
  swapped in between the check and the open does not lead out either.
- Only regular files are read (a FIFO or a device is refused, never blocked on); a read returns
  at most `max_bytes` and says when it cut.
- A write goes to a temporary file in the same directory, is flushed, then renamed over the
  target: a failed or refused write leaves the old file (or nothing), never half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ember.agents.tools._args import argument_error
from ember.agents.tools.builtin_config import FsConfig
from ember.agents.types import ToolOutcome, ToolSpec

_FS_TIMEOUT = 10.0

log = logging.getLogger(__name__)


class FsError(Exception):
    """A refusal or failure the model reads as the tool's error."""


class _PathArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)


class _ListArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "."


class _WriteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)
    content: str


class FsRoot:
    """The root directory and the path checks every fs_* call goes through."""

    def __init__(self, config: FsConfig, home: Path) -> None:
        root = Path(config.root).expanduser()
        self.root = root if root.is_absolute() else home / root
        self.config = config

    def real_root(self) -> str:
        # Resolved at each call: the root may be created (or moved) after ember started.
        real = os.path.realpath(self.root)
        if not os.path.isdir(real):
            if not self.config.writable or os.path.exists(real):
                raise FsError(f"the root directory {self.root} does not exist")
            os.makedirs(real, exist_ok=True)  # a writable root is made at first use
        return real

    def resolve(self, path: str) -> tuple[str, str]:
        """(the real path `path` names, the root's real path); FsError when it leads outside."""
        if "\x00" in path:
            raise FsError("the path may not contain NUL characters")
        if os.path.isabs(path):
            raise FsError(f"{path!r} is absolute: paths are relative to the root")
        root = self.real_root()
        real = os.path.realpath(os.path.join(root, path))
        if not _inside(real, root):
            raise FsError(f"{path!r} is outside the root")
        return real, root

    def check_opened(self, fd: int, path: str, root: str) -> None:
        """The file behind `fd` is under the root (closing the race between resolve and open)."""
        with contextlib.suppress(OSError):  # no /proc: the O_NOFOLLOW open is the guard left
            if not _inside(os.readlink(f"/proc/self/fd/{fd}"), root):
                raise FsError(f"{path!r} is outside the root")


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def _read_upto(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0 and (chunk := os.read(fd, min(size, 1 << 20))):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _relative(real: str, root: str) -> str:
    return os.path.relpath(real, root)


class _FsTool:
    """What the three tools share: the root, argument checks, and turning FsError/OSError
    into a tool error (never a raise)."""

    def __init__(self, fs: FsRoot, spec: ToolSpec) -> None:
        self.fs = fs
        self._spec = spec

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> ToolOutcome:
        try:
            text = await asyncio.to_thread(self.run, arguments)
        except ValidationError as exc:
            return ToolOutcome(argument_error(exc), is_error=True)
        except FsError as exc:
            return ToolOutcome(str(exc), is_error=True)
        except OSError as exc:
            return ToolOutcome(f"{self._spec.name} failed: {exc.strerror or exc}", is_error=True)
        except Exception as exc:  # a bug here is the tool's failure, not the run's (types.py)
            log.exception("%s failed unexpectedly", self._spec.name)
            return ToolOutcome(f"{self._spec.name} failed: {type(exc).__name__}: {exc}", is_error=True)
        return ToolOutcome(text)

    def run(self, arguments: dict[str, Any]) -> str:
        raise NotImplementedError


def _spec(name: str, description: str, properties: dict[str, Any], required: list[str], config: FsConfig) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=description,
        parameters={
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        },
        timeout=_FS_TIMEOUT,
        require_approval=config.require_approval,
    )


_PATH = {"type": "string", "description": "a path relative to the root directory"}


class FsReadTool(_FsTool):
    def __init__(self, fs: FsRoot) -> None:
        super().__init__(
            fs,
            _spec(
                "fs_read",
                f"Read a text file under the agent's root directory (at most {fs.config.max_bytes} bytes).",
                {"path": _PATH},
                ["path"],
                fs.config,
            ),
        )

    def run(self, arguments: dict[str, Any]) -> str:
        path = _PathArgs.model_validate(arguments).path
        real, root = self.fs.resolve(path)
        cap = self.fs.config.max_bytes
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FsError(f"no file {path!r}") from None
        except IsADirectoryError:
            raise FsError(f"{path!r} is a directory: use fs_list") from None
        try:
            self.fs.check_opened(fd, path, root)
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise FsError(f"{path!r} is a directory: use fs_list")
            if not stat.S_ISREG(info.st_mode):
                raise FsError(f"{path!r} is not a regular file")
            os.set_blocking(fd, True)
            data = _read_upto(fd, cap + 1)
        finally:
            os.close(fd)
        if b"\x00" in data[:cap]:
            raise FsError(f"{path!r} is a binary file ({info.st_size} bytes): fs_read reads text")
        text = data[:cap].decode("utf-8", errors="replace")
        if len(data) > cap:
            return f"[cut at {cap} of {info.st_size} bytes]\n{text}"
        return text


class FsWriteTool(_FsTool):
    def __init__(self, fs: FsRoot) -> None:
        super().__init__(
            fs,
            _spec(
                "fs_write",
                f"Write a text file under the agent's root directory, replacing it if it exists "
                f"(at most {fs.config.max_bytes} bytes; missing parent directories are created).",
                {"path": _PATH, "content": {"type": "string", "description": "the file's whole new content"}},
                ["path", "content"],
                fs.config,
            ),
        )

    def run(self, arguments: dict[str, Any]) -> str:
        args = _WriteArgs.model_validate(arguments)
        data = args.content.encode()
        if len(data) > self.fs.config.max_bytes:
            raise FsError(f"the content is {len(data)} bytes, over the limit of {self.fs.config.max_bytes}")
        real, root = self.fs.resolve(args.path)
        if real == root or os.path.isdir(real):
            raise FsError(f"{args.path!r} is a directory")
        parent = os.path.dirname(real)
        os.makedirs(parent, exist_ok=True)
        # The parent, now that it exists, resolved again: a symlink may have been put there.
        if not _inside(os.path.realpath(parent), root):
            raise FsError(f"{args.path!r} is outside the root")
        try:
            mode = stat.S_IMODE(os.stat(real).st_mode)  # a replaced file keeps its mode
        except FileNotFoundError:
            mode = 0o644  # mkstemp's own 0600 would hide a new file from its other readers
        fd, tmp = tempfile.mkstemp(prefix=".ember-write-", dir=parent)
        try:
            self.fs.check_opened(fd, args.path, root)
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return f"wrote {len(data)} bytes to {_relative(real, root)}"


class FsListTool(_FsTool):
    def __init__(self, fs: FsRoot) -> None:
        super().__init__(
            fs,
            _spec(
                "fs_list",
                "List a directory under the agent's root directory: one entry a line, directories "
                "ending in '/', files with their size.",
                {"path": {**_PATH, "default": "."}},
                [],
                fs.config,
            ),
        )

    def run(self, arguments: dict[str, Any]) -> str:
        path = _ListArgs.model_validate(arguments).path or "."
        real, root = self.fs.resolve(path)
        if not os.path.isdir(real):
            raise FsError(f"no directory {path!r}" if not os.path.exists(real) else f"{path!r} is not a directory")
        cap = self.fs.config.max_entries
        lines = []
        with os.scandir(real) as entries:
            items = sorted(entries, key=lambda e: e.name)
        for entry in items[:cap]:
            # A link is shown as a link, never followed: where it points may be outside the root.
            if entry.is_symlink():
                lines.append(f"{entry.name}@")
            elif entry.is_dir(follow_symlinks=False):
                lines.append(f"{entry.name}/")
            else:
                with contextlib.suppress(OSError):
                    lines.append(f"{entry.name} ({entry.stat(follow_symlinks=False).st_size} bytes)")
        if len(items) > cap:
            lines.append(f"[cut at {cap} of {len(items)} entries]")
        where = _relative(real, root)
        if not lines:
            return f"{where}: empty"
        return f"{where}: {len(items)} {'entry' if len(items) == 1 else 'entries'}\n" + "\n".join(lines)
