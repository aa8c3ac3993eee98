"""Server-Sent Events wire format: turning events into the bytes a browser's EventSource reads.

Pure functions, no I/O. The broker stores what these return, so an event is encoded once per
tick and the same bytes go to every viewer.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the only line ends the SSE spec knows


def _field(name: str, value: str) -> str:
    if _LINE_BREAK.search(value):
        raise ValueError(f"SSE {name} must be a single line")
    return f"{name}: {value}\n"


def encode_event(
    data: str, event: str | None = None, id: int | str | None = None
) -> bytes:
    """Encode one event. Every line of ``data`` gets its own ``data:`` prefix.

    A multi-line fragment sent with a single ``data:`` would be silently cut at its first
    line by the browser, so framing each line is what keeps HTML fragments whole.
    """
    head = ""
    if event is not None:
        head += _field("event", event)
    if id is not None:
        head += _field("id", str(id))
    body = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return (head + body + "\n").encode("utf-8")


def encode_retry(milliseconds: int) -> bytes:
    """Tell the browser how long to wait before reconnecting after the stream drops."""
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")


def encode_comment(text: str) -> bytes:
    """A comment line: ignored by EventSource, but it keeps proxies from closing the stream."""
    return (
        "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode("utf-8")
        + b"\n"
    )


def encode_heartbeat(data: str) -> bytes:
    """A heartbeat: a ``heartbeat`` comment line (all a proxy needs to keep the connection
    open) and, in the same block, a named ``heartbeat`` event carrying ``data``, so a page
    can see the stream is alive even when nothing else is moving."""
    return b": heartbeat\n" + encode_event(data, event="heartbeat")
