"""What every faithverify command shares: exit codes and turning library errors into one line on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from faithverify.errors import FaithverifyError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


def reports_errors(func: F) -> F:
    """Turn our input errors into one line on stderr and exit code 2, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from faithverify.certify import SoundnessViolation

        try:
            return func(*args, **kwargs)
        except FaithverifyError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except SoundnessViolation as exc:
            click.echo(f"internal error: {exc}", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]
