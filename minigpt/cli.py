"""What the command-line entries share: user errors become one line on stderr, not a traceback.

Set MINIGPT_DEBUG=1 to see the full traceback instead.
"""

import argparse
import os
import sys
from collections.abc import Callable

from minigpt.training import TrainingError

USER_ERRORS = (ValueError, TrainingError, OSError)


def run_cli(main: Callable[[], int]) -> None:
    """Run main() and exit with its code; known errors print `error: ...` and exit 1."""
    try:
        code = main()
    except USER_ERRORS as err:
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is in --help)."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
