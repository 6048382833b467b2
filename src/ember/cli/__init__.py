"""ember's command line: a thin client of the server, Ollama's commands, plus `doctor`."""

from ember.cli.main import app, main

__all__ = ["app", "main"]
