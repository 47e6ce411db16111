"""Errors that are the user's to fix: the entry points print their message alone, no stack trace."""

import functools
import sys
from typing import Callable


class UserError(Exception):
    """Bad input (missing corpus, empty file, wrong checkpoint): the message says what to do."""


class CorpusError(UserError):
    pass


class CheckpointError(UserError):
    pass


def user_errors(fn: Callable) -> Callable:
    """Entry-point wrapper: a UserError prints its message alone and exits with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            # a UserError raised while Hydra instantiates a config object arrives wrapped
            cause = e if isinstance(e, UserError) else e.__cause__
            if not isinstance(cause, UserError):
                raise
            print(f"error: {cause}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
