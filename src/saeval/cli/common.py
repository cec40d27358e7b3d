"""What every command shares: one-line errors and the exit codes."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import typer

from saeval.errors import SaevalError

EXIT_BAD_INPUT = 2
EXIT_JOBS_FAILED = 1


def fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)  # one unwrapped line, whatever the terminal width
    raise typer.Exit(EXIT_BAD_INPUT)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a SaevalError raised by a command into ``error: ...`` and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SaevalError as err:
            fail(err)

    return wrapper
