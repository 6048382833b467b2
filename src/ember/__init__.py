"""ember: serve language models on your own machine behind the OpenAI and Ollama APIs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ember.config import Settings
from ember.errors import EmberError

if TYPE_CHECKING:
    from ember.app import build_app

try:
    __version__ = version("ember")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["EmberError", "Settings", "__version__", "build_app"]


def __getattr__(name: str) -> Any:
    # build_app pulls in FastAPI and llama.cpp; CLI commands that only talk HTTP start faster without it.
    if name == "build_app":
        from ember.app import build_app

        return build_app
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
