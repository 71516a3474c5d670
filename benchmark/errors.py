"""The benchmark's user errors: what a user can put right from the message alone.

Every command turns these, and only these, into one line on stderr and exit status 2 (`exit_on_user_error`);
any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from data_prep.errors import DataPrepError


class BenchmarkInputError(ValueError):
    """Bad input (a file, a folder, an option); the message names it."""


class UnknownName(BenchmarkInputError, KeyError):
    """A backbone, profile or other registry name that does not exist; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0])


class WeightsMissing(BenchmarkInputError, FileNotFoundError):
    """An ImageNet weights file that is not in the Keras cache and cannot be downloaded."""

    def __str__(self) -> str:  # FileNotFoundError's str() of one argument is that argument, kept explicit
        return str(self.args[0])


class FigureUnavailable(Exception):
    """A figure cannot be drawn from what is on disk (no model file, no dataset); the message says what is missing.
    Not a user error: the report skips that figure and says why."""


USER_ERRORS = (BenchmarkInputError, DataPrepError)


def exit_on_user_error(prog: str, run: Callable[[], int]) -> int:
    """`run()`, with a user error turned into `prog: error: MESSAGE` on stderr and exit status 2."""
    try:
        return run()
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
