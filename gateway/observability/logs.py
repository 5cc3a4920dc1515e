"""Log setup: one stderr handler, JSON or text, every line carrying the current request id.

The request id lives in a context variable the HTTP layer sets per request (and the worker per
task), so any logger called while handling a request stamps it without knowing about Flask.
Nothing here logs headers or query strings: tokens and URL signatures travel there.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.settings import LOG_FORMATS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
REQUEST_ID: ContextVar[str | None] = ContextVar("airlock_request_id", default=None)
# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_HANDLER_NAME = "airlock"
# json.dumps with options builds a new encoder per call; this one is built once (same output).
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialize `record`; values JSON cannot hold are written as strings."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        line.update(
            (k, v) for k, v in record.__dict__.items() if k not in _STANDARD and k != "request_id"
        )
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


class RequestIdFilter(logging.Filter):
    """Gives every record a `request_id` attribute (for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the current request id, or "-" outside a request."""
        if not getattr(record, "request_id", None):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at emit time (test capture replaces it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        return None


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of `log_format` ("json" or "text")."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(*, log_format: str, level: str) -> logging.Handler:
    """Install (or replace) the Airlock handler on the root logger; `gateway` logs at `level`.

    The root logger's own level is left alone, so other libraries stay at WARNING. Werkzeug's
    development-server request lines are silenced: they print query strings (URL signatures),
    and the access log replaces them.
    """
    handler = StderrHandler()
    handler.name = _HANDLER_NAME
    _use(handler, log_format)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    logging.getLogger("gateway").setLevel(level)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return handler


def use_format(handlers: list[logging.Handler], log_format: str) -> None:
    """Give handlers someone else installed (Celery's) the chosen format and request ids."""
    for handler in handlers:
        _use(handler, log_format)


def _use(handler: logging.Handler, log_format: str) -> None:
    handler.setFormatter(formatter_for(log_format))
    for old in [f for f in handler.filters if isinstance(f, RequestIdFilter)]:
        handler.removeFilter(old)
    if log_format == "text":  # JSON reads the request id itself, and omits it outside requests
        handler.addFilter(RequestIdFilter())
