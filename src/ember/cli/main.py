"""The typer app: every command registered in one place, and the one place errors become a line.

Commands raise; only `main` turns an exception into `Error: ...` and an exit status, so no
command can leak a traceback and none repeats the mapping. That includes click's usage errors
(an unknown option, a bad value, a missing argument): one line and exit 2, not a usage box.
"""

from __future__ import annotations

import os
import sys
import tomllib

import httpx
import pydantic
import typer

from ember.cli import approvals, audit, batch, bench_fleet, chat, doctor, fleet, gateway, keys, models, pull, serve
from ember.cli.output import error_line
from ember.errors import EmberError

EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="ember",
    help="Serve GGUF models on this machine behind the OpenAI and Ollama APIs.",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks are for bugs; main() prints user errors as one line.
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("serve")(serve.serve)
app.command("run")(chat.run)
app.command("pull")(pull.pull)
app.command("import")(pull.import_model)
app.command("list")(models.list_models)
app.command("ls", hidden=True, help="Alias of list.")(models.list_models)
app.command("ps")(models.ps)
app.command("show")(models.show)
app.command("rm")(models.rm)
app.command("cp")(models.cp)
app.command("stop")(models.stop)
app.command("doctor")(doctor.doctor)
app.command("version")(serve.version)
app.add_typer(bench_fleet.bench_app, name="bench")
app.command("routes")(gateway.routes)
app.command("usage")(gateway.usage)
app.add_typer(keys.keys_app, name="keys")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(batch.batch_app, name="batch")
app.add_typer(approvals.approvals_app, name="approvals")
app.add_typer(fleet.fleet_app, name="fleet")


def _validation_message(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if not field:
        return f"invalid settings: {message}"
    # The value came from a flag, EMBER_* or ember.toml; name the first two, the usual suspects.
    return f"invalid {field} (--{field.replace('_', '-')} or EMBER_{field.upper()}): {message}"


def _command_line_errors() -> tuple[type[Exception], ...]:
    """What typer raises for a bad command line when not standalone: its own copy of click's
    exceptions (typer 0.2x, all TyperException), or click's own (older typer)."""
    kinds: list[type[Exception]] = [typer.TyperException]
    try:
        import click
    except ImportError:
        return tuple(kinds)
    return (*kinds, click.ClickException)


_COMMAND_LINE_ERRORS = _command_line_errors()


def _command_line_message(exc: Exception) -> str:
    """One line: click's message, and for a usage error (exit 2) where to read the usage."""
    format_message = getattr(exc, "format_message", None)
    message = " ".join((format_message() if callable(format_message) else str(exc)).split())
    ctx = getattr(exc, "ctx", None)
    if getattr(exc, "exit_code", 1) == 2 and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `ember` script and `python -m ember`."""
    try:
        # Not standalone: click's errors come here as exceptions instead of being printed.
        code = app(args=argv, prog_name="ember", standalone_mode=False)
    except _COMMAND_LINE_ERRORS as exc:
        exit_code = int(getattr(exc, "exit_code", 2))
        if type(exc).__name__ == "NoArgsIsHelpError":
            # A group given nothing to do: its help, which typer's rich formatting has printed already.
            help_text = getattr(exc, "format_message", lambda: "")()
            if help_text.strip():
                print(help_text, file=sys.stderr)
            sys.exit(exit_code)
        error_line(_command_line_message(exc))
        sys.exit(exit_code)
    except typer.Abort as exc:
        # Ctrl-C (older typer) or end of input at a prompt.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            sys.exit(EXIT_INTERRUPTED)
        error_line("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except EmberError as exc:
        error_line(exc.message)
        sys.exit(1)
    except httpx.HTTPError as exc:
        error_line(f"HTTP request failed: {exc}")
        sys.exit(1)
    except pydantic.ValidationError as exc:
        error_line(_validation_message(exc))
        sys.exit(2)
    except tomllib.TOMLDecodeError as exc:
        error_line(f"{os.environ.get('EMBER_CONFIG', 'ember.toml')}: {exc}")
        sys.exit(2)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        error_line(f"{where}{exc.strerror or exc}")
        sys.exit(1)
    except Exception as exc:
        # A bug, not a user error: still one line, unless asked to debug.
        if os.environ.get("EMBER_LOG_LEVEL", "").lower() == "debug":
            raise
        error_line(f"unexpected {type(exc).__name__}: {exc} (set EMBER_LOG_LEVEL=debug for a traceback)")
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(code) comes back as a return value
        sys.exit(code)
