"""Structured logs: one JSON object per line, and the per-statement log record.

What may appear in a log line is decided here, once: the statement logger takes a
`StatementLog` whose fields are all safe (analyst, a fingerprint of the normalized
statement, route, decision, SQLSTATE, cost, durations) and never the statement text,
its literals, results, or a backend's error text. Exceptions are logged by type and
place only: an exception's message may quote private values (a failed cast of a value,
a backend error), so the JSON formatter drops it.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

STATEMENT_LOGGER = "dpproxy.statement"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@dataclass(frozen=True, slots=True)
class StatementLog:
    """What is logged about one statement (every field is safe to log)."""

    analyst: str
    dataset: str
    fingerprint: str  # sha256 prefix of the normalized statement; never the text itself
    route: str
    decision: str
    sqlstate: str
    epsilon: str | None
    cache_hit: bool | None
    duration_ms: float
    stages_ms: dict[str, float]
    protocol: str
    instance: str


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info and record.exc_info[0] is not None:
            etype, _evalue, tb = record.exc_info
            # The type and the innermost frame only: the message may quote private data.
            frames = traceback.extract_tb(tb)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            out["exception"] = {"type": etype.__name__, "where": where}
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The classic one-line format, with `extra` fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as readable text; exception messages dropped as in JSON."""
        saved = record.exc_info, record.exc_text
        if record.exc_info and record.exc_info[0] is not None:
            etype, _e, tb = record.exc_info
            frames = traceback.extract_tb(tb)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            record.exc_info, record.exc_text = None, None
            base = super().format(record) + f" [{etype.__name__} at {where}]"
        else:
            base = super().format(record)
        record.exc_info, record.exc_text = saved
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        if extra:
            base += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extra.items())
        return base


def configure_logging(fmt: Literal["text", "json"], verbose: bool = False) -> None:
    """Install the chosen formatter on the root logger (replaces earlier handlers)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # sqlglot reports its own parsing decisions at INFO; they are noise in our logs.
    logging.getLogger("sqlglot").setLevel(logging.WARNING)


def log_statement(entry: StatementLog) -> None:
    """Write one statement's log line (logger `dpproxy.statement`, level INFO)."""
    logging.getLogger(STATEMENT_LOGGER).info("statement", extra=asdict(entry))
