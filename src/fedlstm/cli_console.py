"""Consoles of the `fedlstm` commands, and how an error is told to the user.

What the user controls (file names, values read from files, error messages that quote them,
schema and class names) is printed as text, never as rich markup or emoji codes: a file named
`a[red]b.csv` prints as `a[red]b.csv`, `file:100:` stays `file:100:` (`:100:` is an emoji code),
and a value `[/]` cannot crash a command. Our own words keep their styling: pass user values
through `Text` / `Text.assemble` (plain strings there are never parsed) or `escape`.
"""

from __future__ import annotations

import click
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from fedlstm.data.readers import BadLineError


def make_console(stderr: bool = False) -> Console:
    """A console that prints `:name:` as it stands (no emoji codes)."""
    return Console(stderr=stderr, emoji=False)


def skip_hint() -> str | None:
    """How the running command skips malformed lines, in its own options (None: it cannot)."""
    ctx = click.get_current_context(silent=True)
    names = {p.name for p in ctx.command.params} if ctx is not None else set()
    if "strict" in names:
        return "drop --strict to skip bad lines"
    if "lenient" in names:
        return "pass --lenient to skip bad lines"
    if "set_" in names:
        return "pass --set data.lenient=true to skip bad lines"
    return None


def error_message(exc: BaseException) -> str:
    """The words of an expected error. A malformed line gets the running command's own option to
    skip it; a pydantic error lists where and what, without the offending input (a record)."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or exc.title}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        return f"invalid {exc.title}: {problems}"
    if isinstance(exc, BadLineError):
        hint = skip_hint()
        return f"{exc.where} ({hint})" if hint else exc.where
    return str(exc)


def error_text(exc: BaseException) -> Text:
    """`error: <message>`, the message as plain text."""
    return Text.assemble(("error:", "bold red"), " ", error_message(exc))

