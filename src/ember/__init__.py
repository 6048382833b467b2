"""ember: serve language models on your own machine behind the OpenAI and Ollama APIs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ember")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

from ember.app import build_app  # noqa: E402
from ember.config import Settings  # noqa: E402
from ember.errors import EmberError  # noqa: E402

__all__ = ["EmberError", "Settings", "__version__", "build_app"]
