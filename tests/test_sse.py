"""SSE wire format: every data line prefixed, fields single-line, frames end with a blank line."""

from __future__ import annotations

import pytest

from ticker.rendering.sse import (
    encode_comment,
    encode_event,
    encode_heartbeat,
    encode_retry,
)


def test_event_has_name_id_and_data_and_ends_with_a_blank_line():
    assert encode_event("hi", event="ABC", id=7) == b"event: ABC\nid: 7\ndata: hi\n\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_line_of_multi_line_data_gets_its_own_data_prefix(newline):
    html = newline.join(["<tr>", "  <td>1</td>", "</tr>"])
    assert encode_event(html) == b"data: <tr>\ndata:   <td>1</td>\ndata: </tr>\n\n"


def test_unicode_line_separators_are_not_sse_line_breaks():
    # U+2028 is a line break for str.splitlines, but not for an EventSource.
    assert encode_event("a\u2028b") == "data: a\u2028b\n\n".encode()


def test_empty_data_still_makes_a_dispatchable_event():
    assert encode_event("", event="X") == b"event: X\ndata: \n\n"


@pytest.mark.parametrize("bad", ["A\nB", "A\rB"])
def test_event_name_or_id_with_a_newline_is_refused(bad):
    with pytest.raises(ValueError):
        encode_event("x", event=bad)
    with pytest.raises(ValueError):
        encode_event("x", id=bad)


def test_retry_and_comments():
    assert encode_retry(1000) == b"retry: 1000\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"


def test_a_heartbeat_is_one_block_a_comment_and_a_named_event():
    beat = encode_heartbeat('<span class="live">\nLive</span>')
    assert beat == (
        b": heartbeat\nevent: heartbeat\n"
        b'data: <span class="live">\ndata: Live</span>\n\n'
    )
