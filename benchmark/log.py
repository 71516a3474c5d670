"""The benchmark's log: progress lines on the console (above any progress bar) and, once a run starts, every line
with its time in OUT/benchmark.log.

Modules log to `logging.getLogger("benchmark.<module>")`; `setup` is called once by the command line. Verbosity: -1
(--quiet) shows warnings and errors only, 0 the progress lines, 1 (--verbose) also debugging detail. The file always
gets everything from the start of the run on, appended, so a resumed run adds to the log of the one it resumes.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm.auto import tqdm

ROOT = "benchmark"
LOG_FILE = "benchmark.log"
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class ConsoleHandler(logging.Handler):
    """Info and debug lines to stdout, warnings and errors to stderr, through tqdm.write so that a progress bar
    stays below them; the streams are looked up when a line is written (tests and pipes swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
            (sys.stderr if record.levelno >= logging.WARNING else sys.stdout).flush()
        except Exception:  # noqa: BLE001  logging must never take the run down
            self.handleError(record)


def setup(verbosity: int = 0) -> logging.Logger:
    """The console handler at the verbosity's level (replacing one set up before, e.g. by an earlier call)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for h in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(h)
    console = ConsoleHandler(LEVELS[max(-1, min(1, verbosity))])
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    return logger


def log_to(out: Path) -> Path:
    """Also write every line, timed, to OUT/benchmark.log (one file handler per OUT)."""
    logger = logging.getLogger(ROOT)
    path = (Path(out) / LOG_FILE).resolve()
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in logger.handlers):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    return path


def close_files() -> None:
    logger = logging.getLogger(ROOT)
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()


def get(module: str) -> logging.Logger:
    """The logger of one module; the console handler is set up on first use when the command line has not."""
    if not logging.getLogger(ROOT).handlers:
        setup(0)
    return logging.getLogger(f"{ROOT}.{module}")
