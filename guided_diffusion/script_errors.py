"""
How the programs end on bad input: one line naming the flag, file or value at fault and
exit status 1, instead of a traceback.

A user error is a ``ValueError`` (a bad value, a command line argparse cannot parse: see
``ArgumentParser``, a file of the wrong kind, a checkpoint that does not fit the flags, a run
that diverged) or an ``OSError`` (a missing or unreadable
file, a folder that cannot be written, a full disk). Anything else is a bug and keeps its
traceback. Set the environment variable ``GUIDED_DIFFUSION_DEBUG=1`` to see the traceback of
user errors too. Files are written atomically, so an error never leaves a half-written one.
"""

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from typing import NoReturn, Optional

DEBUG_VAR = "GUIDED_DIFFUSION_DEBUG"

USER_ERRORS = (ValueError, OSError)


class SamplingInputError(ValueError):
    """Bad flags or input files: the message says what to change."""


class UsageError(ValueError):
    """A command line argparse cannot parse (an unknown flag, a value of the wrong type)."""


class ArgumentParser(argparse.ArgumentParser):
    """
    ``argparse.ArgumentParser`` whose errors are user errors like any other: it raises
    ``UsageError`` (one line under ``run_program``, exit status 1) instead of printing the
    usage text and exiting with status 2. An unknown flag gets the closest known one as a
    suggestion. ``--help`` still prints the help and exits with status 0.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}{self._suggestion(message)} (see --help)")

    def _suggestion(self, message: str) -> str:
        """' (did you mean --x?)' for the first unknown flag of an 'unrecognized' message."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [s for action in self._actions for s in action.option_strings]
        for word in message.split(":", 1)[1].split():
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                return f" (did you mean {close[0]}?)" if close else ""
        return ""


def debugging() -> bool:
    """:return: True when ``GUIDED_DIFFUSION_DEBUG`` asks for full tracebacks."""
    return os.environ.get(DEBUG_VAR, "").strip().lower() not in ("", "0", "false", "no")


def describe(err: BaseException) -> str:
    """
    :return: the one-line text of a user error (with the kind of OS error when the
        message alone does not tell it, e.g. "no space left on device: <file>").
    """
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror.lower()}: {err.filename}"
    text = str(err) or type(err).__name__
    return text


def run_program(main: Callable[[], None], prog: Optional[str] = None) -> None:
    """
    Run a program's ``main``: a user error (see ``USER_ERRORS``) prints
    ``<prog>: error: <message>`` on stderr and exits with status 1; other exceptions keep
    their traceback.

    A program that ends normally then runs what it registered with ``at_program_end`` (a
    program that joined a process group leaves it on every rank: dist_util.finish).

    :param main: the program's entry point, called without arguments.
    :param prog: the name to print (default: the script's file name).
    """
    try:
        main()
    except USER_ERRORS as err:
        if debugging():
            raise
        name = prog or os.path.basename(sys.argv[0])
        print(f"{name}: error: {describe(err)}", file=sys.stderr)
        sys.exit(1)
    while _AT_PROGRAM_END:
        _AT_PROGRAM_END.pop()()


# What run_program calls once the program's main has returned normally (at_program_end).
_AT_PROGRAM_END: list[Callable[[], None]] = []


def at_program_end(fn: Callable[[], None]) -> None:
    """
    Have run_program call ``fn`` when the program ends normally (once, however often it is
    registered), e.g. ``dist_util.finish`` once the program joined a process group.
    """
    if fn not in _AT_PROGRAM_END:
        _AT_PROGRAM_END.append(fn)
