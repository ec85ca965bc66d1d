"""Quiet by default: the console shows fedpeft's own progress lines; Flower's log, Python
warnings, transformers and datasets chatter go to the run's log file. `--verbose` puts
everything back on the console.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_NAME = "run.log"
_THIRD_PARTY = ("flwr", "py.warnings", "transformers", "datasets", "torchao", "ray")
# CSI (colours, cursor moves), OSC (window titles, hyperlinks) and two-byte escape sequences.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def printable(text: object, limit: int = 80) -> str:
    """`text` safe for a terminal, a log line or a plot label: ANSI escape sequences
    removed, every other non-printable character (newline, NUL, bidi override) shown as
    '?', at most `limit` characters. Text a client chose must never move the cursor,
    forge a log line or reach matplotlib's math parser unescaped (see server/report.py)."""
    raw = str(text)[:8 * limit]  # bounds the work on a megabyte-long name
    clean = "".join(c if c.isprintable() else "?" for c in _ANSI.sub("", raw))
    return clean if len(clean) <= limit else clean[:limit - 1] + "…"


def ray_init_args(verbose: bool) -> dict:
    """Ray's start-up options: with log_to_driver off, worker output stays in Ray's own
    session logs (/tmp/ray/session_latest/logs) instead of the console."""
    return {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}


@contextmanager
def quiet(log_path: Path, verbose: bool = False) -> Iterator[None]:
    """Send third-party logging and warnings to `log_path` for the duration (not when verbose)."""
    if verbose:
        yield
        return
    from flwr.common.logger import console_handler
    from transformers.utils import logging as transformers_logging

    log_path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    flower = logging.getLogger("flwr")
    loggers = [logging.getLogger(name) for name in _THIRD_PARTY]
    saved = [(logger, logger.propagate) for logger in loggers]
    flower.removeHandler(console_handler)
    for logger in loggers:
        logger.addHandler(file_handler)
        logger.propagate = False  # nothing reaches Python's last-resort console handler
    logging.captureWarnings(True)
    transformers_logging.disable_default_handler()  # its own stderr handler: the file handler above takes over
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, propagate in saved:
            logger.removeHandler(file_handler)
            logger.propagate = propagate
        flower.addHandler(console_handler)
        transformers_logging.enable_default_handler()
        transformers_logging.enable_progress_bar()
        file_handler.close()
