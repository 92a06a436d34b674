"""Turning FrbError into click's one-line error with exit status 2, and Ctrl-C into a hint to resume."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .errors import FrbError

F = TypeVar("F", bound=Callable[..., Any])

# The status a shell reports for a process ended by SIGINT: 128 + 2.
INTERRUPTED_EXIT = 130


class FrbClickError(click.ClickException):
    """Printed by click as `Error: <message>`; exits with status 2 like a usage error."""

    exit_code = 2


def reports_errors(command: F) -> F:
    """Decorate a click command so an FrbError ends it with one line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FrbError as err:
            raise FrbClickError(str(err)) from None

    return wrapper  # type: ignore[return-value]


def resumes_on_rerun(command: F) -> F:
    """Decorate a resumable click command so that Ctrl-C prints how to resume and exits with status 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("Interrupted. Run the same command again to resume; finished work is kept.", err=True)
            sys.exit(INTERRUPTED_EXIT)

    return wrapper  # type: ignore[return-value]
