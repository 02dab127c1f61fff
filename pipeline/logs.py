"""Logging through the standard `logging` module: every line is `[stage] message`, from the logger `pipeline.<stage>`.

Outside a unit a line goes to the console (the `sys.stdout` of the moment). While a unit runs (`unit_log`), a handler
appends its lines to the unit's `log.txt` and keeps them, so that a worker sends them back with its result and the
scheduler prints them; in a worker (echo off) the console handler is off and the unit's stdout and stderr go to its
log too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

ROOT = "pipeline"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.name.partition('.')[2] or record.name}] {record.getMessage()}"


class _Console(logging.Handler):
    """Prints to the sys.stdout of the moment (pytest's capture, or a redirect), not the one at start."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


class UnitLog(logging.Handler):
    """The lines logged while one unit runs: appended to its log file (`file`) and kept in `lines`."""

    def __init__(self, file):
        super().__init__()
        self.file, self.lines = file, []
        self.setFormatter(_Format())

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.lines.append(line)
        print(line, file=self.file, flush=True)

    def write(self, text: str) -> None:
        """A line of the attempt's own (the `== run ...` lines), in the file only."""
        print(text, file=self.file, flush=True)


_root = logging.getLogger(ROOT)
_root.setLevel(logging.INFO)
_root.propagate = False  # the console is ours: a root handler someone adds must not print every line twice
_console = _Console()
_console.setFormatter(_Format())
_root.addHandler(_console)


def logger(stage: str) -> logging.Logger:
    """The logger of a stage (or of `run`, `budget`, `data`): its lines read `[stage] message`."""
    return logging.getLogger(f"{ROOT}.{stage}")


def log(stage: str, msg: str) -> None:
    logger(stage).info(msg)


@contextlib.contextmanager
def unit_log(path: Path, echo: bool) -> Iterator[UnitLog]:
    """While a unit runs: its lines also go to `path`; with echo off (a worker) only there, with its stdout and
    stderr."""
    with open(path, "a") as f:
        handler = UnitLog(f)
        _root.addHandler(handler)
        if not echo:
            _root.removeHandler(_console)
        try:
            if echo:
                yield handler
            else:
                with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    yield handler
        finally:
            _root.removeHandler(handler)
            if not echo:
                _root.addHandler(_console)
