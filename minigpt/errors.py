"""The errors a user can cause and fix: bad settings, unusable files, a run that cannot go on.

Every one of them derives from `MiniGPTError`. The command-line entry points (minigpt.cli.run_cli)
print such an error as one line and exit 1; any other exception is a bug and keeps its traceback.
"""


class MiniGPTError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(MiniGPTError, ValueError):
    """A setting (config file, --section.key, model option) cannot be used."""


class DataError(MiniGPTError, ValueError):
    """The training text cannot be used."""


class CheckpointError(MiniGPTError, ValueError):
    """A checkpoint or run directory is missing, damaged, foreign or unusable."""


class InputError(MiniGPTError, ValueError):
    """A prompt, a file given on the command line or a sampling control cannot be used."""


class TrainingError(MiniGPTError, RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable run directory)."""


class DiskFullError(MiniGPTError):
    """A file could not be written for lack of room on its file system; the message names the
    file and the free space it needs. Not an OSError, so that no `except OSError` meant for an
    unwritable optional file (a cache) hides it."""


class RunInUseError(MiniGPTError):
    """Another process is training in the run directory."""


class Interrupted(MiniGPTError):
    """Ctrl-C, SIGTERM or the app's Cancel stopped work that keeps nothing half-done (preparing
    the data); the message says what happens next. The command lines print it and exit 130."""
