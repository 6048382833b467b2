"""Commands that inspect or change the server's models: list, ps, show, rm, cp, stop."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ember.cli.client import EmberClient
from ember.cli.output import human_size, parse_time, print_table, relative_time, short_digest
from ember.config import Settings
from ember.errors import EmberError

# Go's zero time and "keep forever" both come out as dates far from now; neither is a deadline.
_FOREVER_AFTER_YEARS = 100


def _client() -> EmberClient:
    return EmberClient.from_settings(Settings())


def list_models() -> None:
    """List the models in the store."""
    with _client() as client:
        models = client.tags()
    rows = [
        [
            str(m.get("name") or m.get("model") or "?"),
            short_digest(m.get("digest")),
            human_size(m.get("size")),
            relative_time(parse_time(m.get("modified_at"))),
        ]
        for m in models
    ]
    print_table(["NAME", "ID", "SIZE", "MODIFIED"], rows)


def _processor(model: dict[str, Any]) -> str:
    size = model.get("size") or 0
    vram = model.get("size_vram") or 0
    if not size or vram <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    gpu = round(vram * 100 / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def _until(value: Any) -> str:
    moment = parse_time(value)
    now = datetime.now(UTC)
    if moment is None or abs((moment - now).days) > 365 * _FOREVER_AFTER_YEARS:
        return "Forever"
    if moment < now:
        return "Stopping..."
    return relative_time(moment, now)


# Columns ember's server may add to /api/ps beyond Ollama's: (header, keys tried in order).
_EXTRA_PS_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CONTEXT", ("context_length",)),
    ("BUSY", ("slots_busy", "in_flight")),
    ("QUEUE", ("queue", "queued")),
)


def _extra_value(model: dict[str, Any], keys: tuple[str, ...]) -> str:
    value = next((model[key] for key in keys if key in model), None)
    # A list of waiting requests reads best as its length.
    return str(len(value)) if isinstance(value, list) else "-" if value is None else str(value)


def ps() -> None:
    """List the models loaded in memory now."""
    with _client() as client:
        models = client.ps()
    extras = [(header, keys) for header, keys in _EXTRA_PS_COLUMNS if any(k in m for m in models for k in keys)]
    headers = ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL", *(header for header, _ in extras)]
    rows = [
        [
            str(m.get("name") or m.get("model") or "?"),
            short_digest(m.get("digest")),
            human_size(m.get("size")),
            _processor(m),
            _until(m.get("expires_at")),
            *(_extra_value(m, keys) for _, keys in extras),
        ]
        for m in models
    ]
    print_table(headers, rows)


def _architecture(info: dict[str, Any]) -> str | None:
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    return model_info.get("general.architecture") or details.get("family")


def _model_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = _architecture(info)
    context = model_info.get(f"{arch}.context_length") if arch else None
    embedding = model_info.get(f"{arch}.embedding_length") if arch else None
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size")),
        ("context length", context),
        ("embedding length", embedding),
        ("quantization", details.get("quantization_level")),
    ]
    return [(label, str(value)) for label, value in rows if value not in (None, "")]


def _parameter_lines(parameters: Any) -> list[str]:
    """Ollama sends parameters as Modelfile text; accept a mapping as well."""
    if isinstance(parameters, dict):
        return [f"{key} {json.dumps(value) if isinstance(value, str) else value}" for key, value in parameters.items()]
    return [line.strip() for line in str(parameters or "").splitlines() if line.strip()]


def _print_section(title: str, lines: list[str]) -> None:
    if not lines:
        return
    print(f"  {title}")
    for line in lines:
        print(f"    {line}")
    print()


def show(
    model: Annotated[str, typer.Argument(help="Model name, e.g. smollm2:135m.")],
    template: Annotated[bool, typer.Option("--template", help="Print only the chat template.")] = False,
    parameters: Annotated[bool, typer.Option("--parameters", help="Print only the default parameters.")] = False,
    modelfile: Annotated[bool, typer.Option("--modelfile", help="Print only the Modelfile.")] = False,
) -> None:
    """Show a model's architecture, size, context length, quantization and capabilities."""
    with _client() as client:
        info = client.show(model)
    if template:
        print(info.get("template") or "")
        return
    if parameters:
        print("\n".join(_parameter_lines(info.get("parameters"))))
        return
    if modelfile:
        print(info.get("modelfile") or "")
        return
    width = max((len(label) for label, _ in _model_rows(info)), default=0) + 4
    _print_section("Model", [f"{label:<{width}}{value}" for label, value in _model_rows(info)])
    _print_section("Capabilities", [str(c) for c in info.get("capabilities") or []])
    _print_section("Parameters", _parameter_lines(info.get("parameters")))


def rm(models: Annotated[list[str], typer.Argument(help="One or more model names.")]) -> None:
    """Delete models from the store."""
    with _client() as client:
        for model in models:
            client.delete(model)
            print(f"deleted '{model}'")


def cp(
    source: Annotated[str, typer.Argument(help="Existing model name.")],
    destination: Annotated[str, typer.Argument(help="New name.")],
) -> None:
    """Copy a model under a new name (the weights are shared, not duplicated)."""
    with _client() as client:
        client.copy(source, destination)
    print(f"copied '{source}' to '{destination}'")


def _same_model(given: str, listed: dict[str, Any]) -> bool:
    # "smollm2" means "smollm2:latest", as everywhere in Ollama's naming.
    wanted = given if ":" in given else f"{given}:latest"
    return wanted in (listed.get("name"), listed.get("model")) or given in (listed.get("name"), listed.get("model"))


def stop(model: Annotated[str, typer.Argument(help="A model loaded in memory (see `ember ps`).")]) -> None:
    """Unload a model from memory now."""
    with _client() as client:
        if not any(_same_model(model, m) for m in client.ps()):
            raise EmberError(f"model '{model}' is not running")
        client.unload(model)
    print(f"stopped '{model}'")
