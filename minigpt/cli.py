"""What the command-line entry points share: a user error is one line on stderr, not a traceback.

Only minigpt's own user errors (minigpt.errors.MiniGPTError) and interrupts are caught: anything
else is a bug and keeps its traceback. Set MINIGPT_DEBUG=1 to see the traceback of a user error too.
"""

import argparse
import contextlib
import difflib
import os
import sys
import warnings
from collections.abc import Callable

from minigpt.errors import Interrupted, MiniGPTError

STOP_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells do


def exit_code(stopped_by: str | None) -> int:
    """The exit code of a command whose training stopped for this reason (None: it finished)."""
    return STOP_EXIT_CODES.get(stopped_by, 0)


def run_cli(main: Callable[[], int], whole_process: bool = False) -> None:
    """Run main() and exit with its code; a user error prints `error: ...` and exits 1, and a
    warning prints as `warning: ...` (without the file and line of the code that warned).

    whole_process: main() is all this process does (the `__main__` of train.py, generate.py and
    the `python -m minigpt.*` tools), so it ends at once, with its output flushed, rather than
    through the interpreter's teardown: after `import torch` and the torch._dynamo that every
    torch.optim optimizer imports, that teardown takes 1.0 s, and 0.05 s skipped (train.py with
    the speedrun config, median of 3 alternating runs, 2-core Zen 3 VM, 2026-11-30): 6% of the
    CPU speedrun. main() has closed what it opened by then (run lock, TensorBoard's writer,
    progress bar, and the process group of a run, or of a start that failed after joining it).
    A bug's traceback still ends the usual way. Tests and notebooks leave it off: they go on
    after main()."""
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a character shows "?"
        if hasattr(stream, "reconfigure"):  # (Windows consoles and pipes use a legacy code page)
            stream.reconfigure(errors="replace")
    try:
        code = main()
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        code = STOP_EXIT_CODES["SIGINT"]
    except MiniGPTError as err:
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = STOP_EXIT_CODES["SIGINT"]
    if whole_process:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe has nothing to flush
                stream.flush()
        os._exit(code or 0)
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is in --help), and a flag is
    taken only when spelt in full: argparse would read --train.max_step as --train.max_steps and
    --model.emb as --model.embed_dim, where a misspelt key must stop the command."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message}{self.suggestion(message)} (see --help)", file=sys.stderr)
        sys.exit(2)

    def suggestion(self, message: str) -> str:
        """" (did you mean --flag?)" for the first unrecognized flag in message, if one is close."""
        if not message.startswith("unrecognized argument"):
            return ""
        flags = [option for action in self._actions for option in action.option_strings]
        for word in message.split():
            name = word.split("=", 1)[0]
            if name.startswith("--"):
                close = ([f for f in flags if f.startswith(name)][:3]
                         or difflib.get_close_matches(name, flags, n=1))
                if close:
                    return f" (did you mean {' or '.join(close)}?)"
        return ""
