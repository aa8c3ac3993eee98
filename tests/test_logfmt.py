"""The log line format (``ticker/logfmt.py``): fields that read back exactly, and one line per
record, whatever a value, a message or a traceback holds."""

from __future__ import annotations

import json
import logging
import re
import sys

from hypothesis import given
from hypothesis import strategies as st

from ticker.logfmt import LineFormatter, event


def test_plain_values_are_written_bare_and_the_rest_quoted():
    line = event(
        "stream.close", client="::1", open=3, ok=True, note="two words", empty=""
    )
    assert (
        line == 'event=stream.close client=::1 open=3 ok=true note="two words" empty=""'
    )


@given(st.text())
def test_any_text_stays_on_one_line_and_reads_back_exactly(text):
    line = event("x", value=text, after="y")
    assert len(line.splitlines()) == 1
    value = line.removeprefix("event=x value=").removesuffix(" after=y")
    assert (json.loads(value) if value.startswith('"') else value) == text


def record(message: str, *args: object, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "ticker.feed", logging.ERROR, __file__, 1, message, args, exc_info
    )


def test_a_traceback_is_a_quoted_field_of_its_own_record():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        line = LineFormatter().format(
            record("event=feed.restart", exc_info=sys.exc_info())
        )
    assert len(line.splitlines()) == 1
    head, _, trace = line.partition(" traceback=")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR \[\d+\] ticker\.feed "
        r"event=feed\.restart",
        head,
    )
    trace = json.loads(trace)
    assert trace.startswith("Traceback (most recent call last):\n")
    assert trace.endswith("ValueError: bad\nthing")


def test_a_line_break_in_any_message_is_escaped_not_written():
    # Messages that are not ours (gunicorn's, a library's) may carry text from a client.
    line = LineFormatter().format(
        record("got %s", "a\r\n2026-01-01T00:00:00.000Z INFO")
    )
    assert len(line.splitlines()) == 1
    assert line.endswith("got a\\r\\n2026-01-01T00:00:00.000Z INFO")
