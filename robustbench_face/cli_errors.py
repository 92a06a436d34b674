"""Turning FrbError into click's one-line error with exit status 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .errors import FrbError

F = TypeVar("F", bound=Callable[..., Any])


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
