"""`ember doctor`: check what ember needs on this machine, one line per check, with a fix."""

from __future__ import annotations

import errno
import importlib.metadata
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from ember.cli.client import EmberClient
from ember.cli.output import status_word
from ember.cli.ports import bind_error
from ember.config import Settings
from ember.errors import EmberError

MIN_PYTHON = (3, 11)
MIN_FREE_BYTES = 2 * 1024**3
_CPU_FLAG = re.compile(r"\b([A-Z][A-Z0-9_]*)\s*=\s*1\b")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{status_word(self.ok)} {self.name}: {self.detail}"
        return f"{text} -- fix: {self.fix}" if not self.ok and self.fix else text


def check_python() -> Check:
    version = ".".join(str(part) for part in sys.version_info[:3])
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", True, version)
    need = ".".join(map(str, MIN_PYTHON))
    return Check("python", False, f"{version} is too old", f"install Python {need} or newer")


def _llama_requirement() -> str:
    """The llama-cpp-python pin from ember's own metadata, so the fix names the tested version."""
    try:
        for requirement in importlib.metadata.requires("ember") or []:
            if requirement.lower().startswith("llama-cpp-python"):
                return requirement.split(";")[0].strip()
    except importlib.metadata.PackageNotFoundError:
        pass
    return "llama-cpp-python"


def cpu_features(system_info: str) -> list[str]:
    """The SIMD flags llama.cpp was built with and found (AVX*, NEON), from its system info."""
    return [flag for flag in dict.fromkeys(_CPU_FLAG.findall(system_info)) if flag.startswith(("AVX", "NEON"))]


def check_llama_cpp() -> Check:
    try:
        import llama_cpp
    except Exception as exc:  # a broken native build fails with OSError, not only ImportError
        return Check("llama-cpp-python", False, f"cannot import ({exc})", f"pip install '{_llama_requirement()}'")
    version = getattr(llama_cpp, "__version__", "unknown version")
    raw = llama_cpp.llama_print_system_info()
    info = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    flags = cpu_features(info)
    return Check("llama-cpp-python", True, f"{version}, CPU features: {' '.join(flags) or 'none of AVX/NEON'}")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_home(home: Path) -> Check:
    fix = f"make {home} writable, or set EMBER_HOME to a directory you own"
    if home.exists() and not home.is_dir():
        return Check("home", False, f"{home} is not a directory", fix)
    target = home if home.exists() else _nearest_existing(home)
    try:
        # A real write, because os.access lies on read-only mounts and under some ACLs.
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        return Check("home", False, f"{target} is not writable ({exc.strerror})", fix)
    state = "exists and is writable" if home.exists() else "will be created on first use"
    return Check("home", True, f"{home} {state}")


def check_disk(home: Path) -> Check:
    free = shutil.disk_usage(_nearest_existing(home)).free
    detail = f"{free / 1024**3:.1f} GiB free for {home}"
    if free >= MIN_FREE_BYTES:
        return Check("disk", True, detail)
    return Check("disk", False, detail, "free some space, or set EMBER_HOME to a larger disk (models need ~0.1-10 GiB)")


def _port_is_free(addr: str, port: int) -> bool:
    exc = bind_error(addr, port)
    if exc is not None and exc.errno not in (errno.EADDRINUSE, errno.EACCES):
        raise exc
    return exc is None


def check_port(settings: Settings) -> Check:
    addr, port = settings.bind
    name = f"port {port}"
    try:
        if _port_is_free(addr, port):
            return Check(name, True, f"{addr}:{port} is free for `ember serve`")
    except OSError as exc:
        return Check(
            name, False, f"cannot bind {addr}:{port} ({exc.strerror})", "set EMBER_HOST to an address of this machine"
        )
    try:
        with EmberClient.from_settings(settings) as client:
            if "ember is running" in client.root():
                return Check(name, True, f"in use by an ember server at {settings.base_url}")
    except EmberError:
        pass
    return Check(
        name,
        False,
        f"{addr}:{port} is in use by another program",
        f"stop that program, or use another port: EMBER_HOST=127.0.0.1:{port + 1}",
    )


def check_default_model(settings: Settings) -> Check:
    name = settings.default_model
    fix = f"ember pull {name}"
    if not settings.home.is_dir():
        # Opening the store would create EMBER_HOME; a check should change nothing.
        return Check("default model", False, f"{name} is not in {settings.home}", fix)
    try:
        from ember.runtime.store import ModelStore

        record = ModelStore(settings.home, hf_endpoint=settings.hf_endpoint).get(name)
    except (EmberError, OSError):
        record = None
    except ImportError as exc:
        return Check("default model", False, f"cannot open the store ({exc})", "reinstall ember")
    if record is None:
        return Check("default model", False, f"{name} is not in {settings.home}", fix)
    return Check("default model", True, f"{name} is in the store")


def check_server(settings: Settings) -> Check:
    try:
        with EmberClient.from_settings(settings) as client:
            version = client.version()
    except EmberError as exc:
        return Check("server", False, exc.message, "start it with `ember serve`")
    return Check("server", True, f"ember {version} answers at {settings.base_url}")


def doctor() -> None:
    """Check Python, llama.cpp, EMBER_HOME, disk, port, default model and server; exit 1 on a problem."""
    settings = Settings()
    checks: list[Callable[[], Check]] = [
        check_python,
        check_llama_cpp,
        lambda: check_home(settings.home),
        lambda: check_disk(settings.home),
        lambda: check_port(settings),
        lambda: check_default_model(settings),
        lambda: check_server(settings),
    ]
    ok = True
    for run_check in checks:
        result = run_check()
        print(result.line(), flush=True)
        ok = ok and result.ok
    if not ok:
        raise typer.Exit(1)
