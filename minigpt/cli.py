"""What the command-line entry points share: a user error is one line on stderr, not a traceback.

Only minigpt's own user errors (minigpt.errors.MiniGPTError) and interrupts are caught: anything
else is a bug and keeps its traceback. Set MINIGPT_DEBUG=1 to see the traceback of a user error too.
"""

import argparse
import os
import sys
import warnings
from collections.abc import Callable

from minigpt.errors import MiniGPTError

STOP_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells do


def exit_code(stopped_by: str | None) -> int:
    """The exit code of a command whose training stopped for this reason (None: it finished)."""
    return STOP_EXIT_CODES.get(stopped_by, 0)


def run_cli(main: Callable[[], int]) -> None:
    """Run main() and exit with its code; a user error prints `error: ...` and exits 1, and a
    warning prints as `warning: ...` (without the file and line of the code that warned)."""
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a character shows "?"
        if hasattr(stream, "reconfigure"):  # (Windows consoles and pipes use a legacy code page)
            stream.reconfigure(errors="replace")
    try:
        code = main()
    except MiniGPTError as err:
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = STOP_EXIT_CODES["SIGINT"]
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is in --help)."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
