"""What a person sees: quiet by default (one line per epoch, a summary), verbose on request.

`configure(verbose)` sets the log levels of Ray, Ray Data, Ray Train and MLflow (WARNING unless
verbose), turns colour codes off when stdout is not a terminal, and hides MLflow's artifact
download bars. It changes process state, so the command line calls it — never the library at
import.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow", "alembic", "urllib3", "filelock")
_VERBOSE = False


class _DropNotices(logging.Filter):
    """Ray Data's WARNING that progress bars are off — they are off on purpose in quiet runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Progress bars disabled" not in record.getMessage()


def is_tty(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def configure(verbose: bool = False) -> None:
    """Log levels and colours for a command-line run (idempotent)."""
    global _VERBOSE
    _VERBOSE = verbose
    level = logging.INFO if verbose else logging.WARNING
    name_of_level = logging.getLevelName(level)
    # both libraries configure their loggers when imported (later, lazily): their own variables hold
    os.environ["RAY_DATA_LOG_LEVEL"] = name_of_level
    os.environ["MLFLOW_LOGGING_LEVEL"] = name_of_level
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # Tune's hint to checkpoint less, repeated at every epoch of a local sweep's trials (their
    # per-epoch checkpoints, two kept, force a snapshot of the sweep's state): a screenful per trial
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(level if verbose else logging.ERROR)
    progress_log = logging.getLogger("ray.data._internal.progress")
    if not verbose and not any(isinstance(f, _DropNotices) for f in progress_log.filters):
        progress_log.addFilter(_DropNotices())
    if not is_tty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray's "(worker pid=…)" prefixes without ANSI codes
        os.environ.setdefault("NO_COLOR", "1")
    if not verbose:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow")


def verbose() -> bool:
    return _VERBOSE


def ray_init_kwargs() -> dict:
    """Keyword arguments for `ray.init` that match the verbosity: quiet runs neither log Ray's INFO
    lines nor stream the workers' output (the driver prints the epoch lines itself)."""
    return {
        "logging_level": logging.INFO if _VERBOSE else logging.WARNING,
        "log_to_driver": _VERBOSE,
    }


def echo(line: str) -> None:
    print(line, flush=True)
