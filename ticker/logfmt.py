"""One-line ``key=value`` log records: how the app tells an operator what happened.

Every record is one line: ``<UTC time> <LEVEL> [<pid>] <logger> <message>``. The app's own
events are messages built by :func:`event` (``event=stream.close client=... duration_s=...``),
so ``grep event=stream.close`` finds every disconnect and any logfmt parser reads the fields.
Values with spaces, quotes or control characters are quoted as JSON strings, and
:class:`LineFormatter` escapes whatever line break is left in a record (a traceback, or text
a client sent), so nothing can start a line of its own and pass for another record.
gunicorn (``logconfig_dict`` in ``gunicorn.conf.py``) and ``python app.py`` both use
:data:`LOGGING`, so both write the same lines to the same stream.
"""

from __future__ import annotations

import logging
import re
import time

# A record here needs none of what the logging module looks up for every record by default
# (the logging HOWTO's "Optimization"): the format names no thread, caller or
# multiprocessing name. Under gevent those are dear: ``threading.current_thread()`` makes a
# dummy Thread for each greenlet that logs, and the caller is found by walking up a stack as
# deep as gunicorn's and Flask's frames, in a worker that may hold ten thousand greenlets.
logging.logThreads = False
logging.logMultiprocessing = False
logging._srcfile = None

# What a value may hold and still be written bare: addresses, numbers, names, paths.
_BARE = re.compile(r"[\w.:/@+-]+", re.ASCII)
# Whatever ends a line somewhere (str.splitlines, a terminal, a log shipper): the C0 and C1
# control characters, DEL, and Unicode's line and paragraph separators.
_LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def one_line(text: str) -> str:
    """``text`` with every line-breaking character escaped as in JSON (``\\n``, ``\\u001b``)."""
    return _LINE_BREAKING.sub(_escape, text)


def quote(text: str) -> str:
    """``text`` as a JSON string literal on one line (``json.loads`` gives it back)."""
    return '"' + one_line(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text if _BARE.fullmatch(text) else quote(text)


def event(name: str, **fields: object) -> str:
    """``event=<name>`` then each field as ``key=value``, in order, on one line.

    Values are written bare when they are plain (``client=127.0.0.1``, ``open=3``) and
    quoted otherwise (``error="RuntimeError: injected fault"``).
    """
    pairs = [("event", name), *fields.items()]
    return " ".join(f"{key}={_value(value)}" for key, value in pairs)


class LineFormatter(logging.Formatter):
    """Formats every record, traceback included, as exactly one line.

    The time is UTC in ISO 8601 with milliseconds, whatever the host's time zone. A
    traceback is appended as a quoted ``traceback=`` field instead of on the following
    lines, where it could interleave with other processes' lines and would carry no time
    or level of its own.
    """

    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        line = self.formatMessage(record)
        if record.exc_info:
            line += " traceback=" + quote(self.formatException(record.exc_info))
        if record.stack_info:
            line += " stack=" + quote(self.formatStack(record.stack_info))
        return one_line(line)


# Everything to stderr through one handler, so the lines of the app, of gunicorn and of
# its access log come out in order and alike. gunicorn's loggers get no handler of their
# own (dictConfig removes the ones gunicorn made) and pass their records up to the root;
# their levels are left to gunicorn's own settings.
LOGGING: dict[str, object] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"()": LineFormatter}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"handlers": [], "propagate": True},
        "gunicorn.access": {"handlers": [], "propagate": True},
    },
}
