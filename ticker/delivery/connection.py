"""One viewer's SSE connection, from the request that opens it to the release that frees it.

A :class:`Connection` is the whole life of one stream in one place: admission (the caps),
the first frame (the retry hint and the snapshot), frames from the fan-out, catching up when
the viewer's socket fell behind, heartbeats, noticing a hang-up, the write timeout, the
optional ``?max_s=`` lifetime, and the release that frees its slot. The routes call
:meth:`Connection.open`, which returns the response; the broker calls :meth:`deliver` with
each frame's bytes, and that is all either of them knows about it.

Two ways out to the socket:

- **Direct** (GET, on a server that exposes the plain socket: gunicorn, ``app.py``). Only the
  small first frame goes through the WSGI server, which sends the headers with it. After
  that, the broker's fan-out loop writes each frame straight to the socket without waking
  this viewer's greenlet: that is what makes ten thousand viewers affordable on one core.
  A viewer whose socket is full gets a conflating mailbox instead (at most the latest event
  per topic), and its own greenlet catches it up when the socket drains.
- **Plain** (``HEAD``, TLS terminated in the server, a server that hides the socket): each
  batch is yielded to the server, which writes it.

A viewer that asked for gzip gets the same frames compressed, once per audience
(``compression.py``): until it has joined its audience's shared compressed stream, at the
end of an epoch, it gets frames compressed on their own, and after catching up it joins
again the same way. A stream that ends cleanly ends with a valid gzip trailer.

A viewer is dropped when its socket accepts nothing for ``write_timeout_s`` (a stuck write
is failed by shutting the socket down), when it hangs up (its socket turns readable: an SSE
client sends nothing after its request, so that is its FIN), when the broker ends every
stream (shutdown), or when its ``max_s`` is up. Whatever ends it, :meth:`close` frees it,
exactly once; the WSGI server calls it when the response is done.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import ssl
import time
import zlib
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass

import gevent
from flask import Response
from gevent.event import Event

from ticker import logfmt
from ticker.delivery import compression
from ticker.delivery.broker import (
    Broker,
    ClientLimitReached,
    Frame,
    Snapshot,
    StreamLimitReached,
    chunk,
    with_broadcasts,
)
from ticker.delivery.compression import SharedDeflate, crc_between, crc_combine
from ticker.rendering.fragments import HEARTBEAT
from ticker.rendering.sse import encode_comment, encode_retry

log = logging.getLogger(__name__)

# Set in the environ of a stream request, whose life the connection logs itself, in one
# stream.close line when it ends: the servers' access log leaves it out. Nothing is logged
# when a stream opens, so a herd of 10,000 viewers coming back writes no line at all while
# the worker takes them.
STREAM_LOGGED = "ticker.stream_logged"
# The end of a chunked body: a chunk of length zero.
LAST_CHUNK = b"0\r\n\r\n"
# Where the servers we run under put the connection's socket in the WSGI environ.
SOCKET_KEYS = ("gunicorn.socket", "ticker.socket")


@dataclass(frozen=True)
class StreamRules:
    """What every stream of a process shares: its timings and its fixed events."""

    write_timeout_s: float
    retry_ms: int  # the SSE ``retry:`` hint: how long a browser waits to reconnect
    process_id: str  # named in each stream's first comment: "which worker am I on?"

    def spread_retry(self) -> bytes:
        """A retry hint for a stream this process ends because it is going away: between
        ``retry_ms`` and ``retry_ms + SPREAD_MS``, at random, so the herd of browsers comes
        back to the next process spread over that window instead of all at one instant."""
        return encode_retry(self.retry_ms + random.randrange(SPREAD_MS))


# How widely the retry hints of a process that goes away are spread (see spread_retry).
SPREAD_MS = 1500


class _Stalled(Exception):
    """The viewer's socket accepted nothing for ``write_timeout_s``."""


class Connection:
    """One viewer's stream: its socket, its mailbox, and every reason it may end."""

    __slots__ = (
        "_events",
        "_lifetime",
        "_pending",
        "_plain_deflate",
        "_released",
        "_wake",
        "_watcher",
        "backlog",
        "broker",
        "chunked",
        "client",
        "crc",
        "deflate",
        "delivered",
        "direct",
        "ended",
        "farewell",
        "fd",
        "floor",
        "gzip",
        "joined",
        "joined_at",
        "opened",
        "route",
        "rules",
        "sent_bytes",
        "size",
        "snapshot",
        "sock",
        "topics",
    )

    def __init__(
        self,
        broker: Broker,
        rules: StreamRules,
        route: str,
        topics: tuple[str, ...],
        client: str = "",
        sock: socket.socket | None = None,
        direct: bool = False,
        chunked: bool = True,
        gzip: bool = False,
    ) -> None:
        self.broker, self.rules = broker, rules
        self.route, self.client = route, client
        self.topics = with_broadcasts(topics)
        self.sock = sock
        # Direct writing: the descriptor, whether the server chunks the response, whether
        # the viewer is caught up (the fan-out may write), and the rest of a half-written
        # chunk. Not caught up until the first frame is out.
        self.fd = sock.fileno() if sock is not None and direct else None
        self.chunked = chunked
        self.direct = False
        self.backlog = b""
        # Insertion-ordered: re-inserting on update keeps events in sequence order, so the
        # SSE ids a client sees only ever increase.
        self._pending: dict[str, tuple[int, bytes]] = {}
        self._wake = Event()
        self.ended = False
        self.farewell = b""
        self._released = False
        self.delivered = 0  # events handed to the viewer
        self.sent_bytes = 0
        # Set by the broker on subscribe: the snapshot, and the publish number below which
        # the first frame's events are in it already.
        self.snapshot: Snapshot | None = None
        self.floor = 0
        # gzip: the audience's compressor (set on subscribe), whether this viewer gets its
        # bytes (joined) and its running CRC and length when it joined, and the CRC and
        # length of everything it decoded up to then: what its trailer needs.
        self.gzip = gzip
        self.deflate: SharedDeflate | None = None
        self.joined = False
        self.joined_at = (0, 0)
        self.crc = 0
        self.size = 0
        self._plain_deflate = None
        self.opened = time.monotonic()
        self._watcher = None
        self._lifetime: gevent.Greenlet | None = None
        self._events = self._stream()

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        broker: Broker,
        rules: StreamRules,
        environ: MutableMapping[str, object],
        route: str,
        topics: tuple[str, ...],
        client: str,
        max_s: int = 0,
        gzip: bool = False,
    ) -> Response:
        """The response for a stream request: the stream, or why there is none.

        ``max_s`` (0: none) ends the stream after that many seconds; the browser then
        reconnects after ``retry``. Over HTTP/1.1 the per-symbol view's six streams hold
        every connection the browser allows, and only a stream that ends lets a click on a
        link through.
        """
        if broker.closing:
            # This process is shutting down. A refusal would make the browser's SSE
            # extension back off for seconds; an empty stream with a retry hint brings it
            # back in one, by then to the new process.
            return _sse_response(iter([rules.spread_retry()]))
        sock = next(
            (environ[k] for k in SOCKET_KEYS if environ.get(k) is not None), None
        )
        direct = (
            sock is not None
            and environ.get("REQUEST_METHOD") == "GET"
            and not isinstance(sock, ssl.SSLSocket)
        )
        # The server chunks an HTTP/1.1 response of unknown length: direct frames must be
        # chunks too. HTTP/1.0 has no chunks; the end of the stream is the connection's.
        chunked = environ.get("SERVER_PROTOCOL") != "HTTP/1.0"
        viewer = cls(broker, rules, route, topics, client, sock, direct, chunked, gzip)  # type: ignore[arg-type]
        try:
            broker.subscribe(viewer)
        except StreamLimitReached as refused:
            return viewer._refuse(refused)
        environ[STREAM_LOGGED] = True
        if viewer.sock is not None:
            viewer._watch_for_hangup()
        if max_s:
            viewer._lifetime = gevent.spawn_later(max_s, viewer.end)
        return _sse_response(viewer, gzip)

    def _refuse(self, refused: StreamLimitReached) -> Response:
        per_client = isinstance(refused, ClientLimitReached)
        status = 429 if per_client else 503
        log.warning(
            logfmt.event(
                "stream.refused",
                reason="client_cap" if per_client else "server_cap",
                status=status,
                client=self.client,
                route=self.route,
                limit=self.broker.max_per_client
                if per_client
                else self.broker.max_streams,
            )
        )
        message = (
            "Too many open streams from your address; close some and retry."
            if per_client
            else "Too many open streams on this server; try again shortly."
        )
        response = Response(message + "\n", status=status, mimetype="text/plain")
        response.headers["Retry-After"] = "5"
        return response

    # --- the fan-out's side -------------------------------------------------------------

    def deliver(self, frame: Frame) -> int:
        """Take one frame; return the updates conflated.

        A caught-up viewer gets one non-blocking write of the frame's bytes in its
        encoding; whatever does not fit goes to the mailbox (or, if a chunk was cut in
        half, its rest to ``backlog``) and the viewer's own greenlet is woken to finish the
        job when the socket drains.
        """
        items = frame.items
        if self.floor:
            # The first frame after subscribing: what the snapshot had already must not
            # come twice, so these bytes are this viewer's own: the mailbox sends them.
            floor, self.floor = self.floor, 0
            items = [item for item in items if item[1] > floor]
            if not items:  # all in the snapshot: stay on the direct path
                return 0
            self.direct = False
        if self.direct:
            if not self.gzip:
                buf = frame.framed if self.chunked else frame.data
            elif self.joined:
                buf = frame.gzip_framed if self.chunked else frame.gzip
            else:
                alone = frame.alone()
                buf = chunk(alone) if self.chunked else alone
            try:
                written = os.write(self.fd, buf)  # type: ignore[arg-type]
            except BlockingIOError:
                written = 0
            except OSError:  # the client is gone
                self.end()
                return 0
            if written:
                self.delivered += frame.events
                self.sent_bytes += written
                if self.gzip and not self.joined:
                    self._decoded(frame)
                if written == len(buf):
                    return 0
                self.backlog = buf[written:]
            elif self.joined:
                self._leave(frame.crc_before, frame.size_before)
            self.direct = False
            self._wake.set()
            if written:
                if self.joined:  # the backlog finishes the frame, then it catches up
                    self._leave(frame.crc_after, frame.size_after)
                return 0
        return sum(self.offer(topic, seq, payload) for seq, _, topic, payload in items)

    def _decoded(self, frame: Frame) -> None:
        """Account for a frame this gzip viewer, not joined, will have decoded whole (a
        joined viewer's frames are counted when it leaves or ends, from the audience's
        running CRC)."""
        self.crc = zlib.crc32(frame.data, self.crc)
        self.size += len(frame.data)
        if frame.epoch_end:
            # Nothing after this frame refers back: from the next one on, the shared bytes.
            self.joined = True
            self.joined_at = (frame.crc_after, frame.size_after)

    def _leave(self, crc_after: int, size_after: int) -> None:
        """Stop taking the shared bytes: fold the stretch it decoded into its own CRC."""
        crc_at, size_at = self.joined_at
        length = size_after - size_at
        self.crc = crc_combine(self.crc, crc_between(crc_at, crc_after, length), length)
        self.size += length
        self.joined = False

    def offer(self, topic: str, seq: int, payload: bytes) -> bool:
        """Queue ``payload``; return True if it replaced an undelivered one (conflation)."""
        replaced = self._pending.pop(topic, None) is not None
        self._pending[topic] = (seq, payload)
        self._wake.set()
        return replaced

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self) -> bytes | None:
        """What the mailbox holds, joined (maybe b""), or None once the stream ended."""
        if self.ended:
            return None
        if not self._pending:
            return b""
        data = b"".join(payload for _, payload in self._pending.values())
        self.delivered += len(self._pending) - (HEARTBEAT in self._pending)
        self._pending.clear()
        return data

    def end_now(self, farewell: bytes = b"") -> bool:
        """End the stream here, from the caller's greenlet, if the viewer is caught up:
        ``farewell``, the gzip trailer and the end of the chunked body in one non-blocking
        write, then the socket shut for writing, so nothing can follow (a later write, ours
        or the server's, fails quietly with EPIPE). Returns False, having changed nothing,
        if it cannot (not on the direct path, behind, or its socket full): :meth:`end` it
        then, and its own greenlet does the same.

        This is how a process going away ends its streams. Waking ten thousand greenlets to
        end themselves, each unwinding its stack through gunicorn's, cost seven times more,
        at the moment the next process needs the core to take the viewers back.
        """
        if not self.direct or self.backlog or self.ended:
            return False
        before = self.crc, self.size, self.joined, self.joined_at
        self.farewell = farewell
        last = self._ending()
        if self.chunked:
            last = (chunk(last) if last else b"") + LAST_CHUNK
        try:
            written = os.write(self.fd, last) if last else 0  # type: ignore[arg-type]
        except OSError:  # its socket is full (BlockingIOError), or the client is gone
            written = 0
        if last and not written:
            self.crc, self.size, self.joined, self.joined_at = before
            self.farewell = b""
            return False
        # (Cut short, a write this small cuts the stream's end: the browser reconnects all
        # the same.)
        self.sent_bytes += written
        self.ended, self.direct = True, False
        # Its greenlet is not woken: the process is about to exit (Service.leave). Nor is
        # its end logged: the process's event=shutdown line counts the streams it ended
        # at once, where ten thousand stream.close lines would double what ending costs.
        self._free(socket.SHUT_RDWR)
        return True

    def end(self, farewell: bytes = b"") -> None:
        """End the stream: the viewer's greenlet wakes up, sends ``farewell`` (a last
        event, such as a retry hint) if the stream can still end cleanly, and releases it."""
        self.farewell = farewell
        self.ended = True
        self._wake.set()

    # --- the response body (the WSGI server iterates it, then calls close) -------------

    def __iter__(self) -> Iterator[bytes]:
        # The server iterates the generator itself, with no wrapper in between: every
        # layer between the server and the waiting generator is stack that each idle
        # viewer's greenlet keeps.
        return self._events

    def close(self) -> None:
        """Free the stream (the server is done with the response, however it ended)."""
        self._events.close()  # runs the generator's ``finally`` if it had started
        self._release()

    def _stream(self) -> Iterator[bytes]:
        hello = encode_retry(self.rules.retry_ms) + encode_comment(
            f"process {self.rules.process_id}"
        )
        try:
            if self.fd is not None:
                # Only the small hello goes through the server (the headers go with it):
                # the server keeps the last thing yielded referenced for as long as the
                # stream lasts, and the snapshot is kilobytes. It follows directly.
                with self._write_deadline():
                    yield self._start(hello)
                if self._write_directly():
                    self._finish_directly()
            else:
                yield from self._yield_batches(hello)
        except _Stalled:
            self._drop_stalled()
        except OSError:
            pass  # the client is gone; the server's own last write will fail quietly
        finally:
            self._release()

    # What this viewer gets on its own (not its audience's bytes): its first bytes, its
    # snapshot, what its mailbox caught up. With gzip, each is compressed on its own, so
    # it can follow any flushed piece of the stream.

    def _start(self, hello: bytes) -> bytes:
        if not self.gzip:
            return hello
        self.crc, self.size = zlib.crc32(hello), len(hello)
        return compression.HEADER + _compressed_hello(hello)

    def _own(self, data: bytes) -> bytes:
        if not self.gzip:
            return data
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        return compression.standalone(data)

    def _own_snapshot(self) -> bytes:
        snapshot, self.snapshot = self.snapshot, None
        self.delivered += snapshot.events  # type: ignore[union-attr]
        if not self.gzip:
            return snapshot.data  # type: ignore[union-attr]
        self.crc = zlib.crc32(snapshot.data, self.crc)  # type: ignore[union-attr]
        self.size += len(snapshot.data)  # type: ignore[union-attr]
        return snapshot.gzip()  # type: ignore[union-attr]

    def _ending(self) -> bytes:
        """What a stream that ends cleanly ends with: its farewell, and the gzip trailer
        (if compressed)."""
        if not self.gzip:
            return self.farewell
        if self.joined:  # what it decoded of the shared bytes comes first
            self._leave(self.deflate.crc, self.deflate.size)  # type: ignore[union-attr]
        last = self._own(self.farewell) if self.farewell else b""
        return last + compression.trailer(self.crc, self.size)

    # The direct path.

    def _write_directly(self) -> bool:
        """Catch up, then sleep while the fan-out writes; return True if the stream ended
        cleanly (not with an error), so that it may be ended properly."""
        while self._catch_up():
            self._wake.wait()
            self._wake.clear()
            if self.ended:
                return True
        return self.ended

    def _finish_directly(self) -> None:
        self.direct = False  # the fan-out writes no more
        ending = self._ending()
        if self.backlog:  # a chunk cut in half must be finished first
            rest, self.backlog = self.backlog, b""
            self._send(rest, frame=False)
        if ending:
            self._send(ending, frame=True)

    def _catch_up(self) -> bool:
        """Write what the fan-out could not, cooperatively; then let the fan-out write again.

        Returns False once the stream ended. While this waits on the socket the viewer is
        not ``direct``, so new frames only conflate into its mailbox.
        """
        while self.snapshot is not None or self.backlog or self._pending:
            if self.snapshot is not None:
                self._send(self._own_snapshot(), frame=True)
            if self.backlog:
                rest, self.backlog = self.backlog, b""
                self._send(rest, frame=False)
            data = self.take()
            if data is None:
                return False
            if data:
                self._send(self._own(data), frame=True)
        if self.ended:
            return False
        self.direct = True  # with gzip, it joins its audience at the next epoch's end
        return True

    def _send(self, data: bytes, frame: bool) -> None:
        if frame and self.chunked:
            data = chunk(data)
        with gevent.Timeout(self.rules.write_timeout_s, _Stalled):
            self.sock.sendall(data)  # type: ignore[union-attr]
        self.sent_bytes += len(data)

    # The plain path.

    def _yield_batches(self, hello: bytes) -> Iterator[bytes]:
        """One yield per batch; the server resumes us once it is written."""
        data = self._start(hello) + self._own_snapshot() + self._own(self.take() or b"")
        while data is not None:
            self.sent_bytes += len(data)
            with self._write_deadline():
                yield data
            if not self._pending and not self.ended:
                self._wake.wait()
            self._wake.clear()
            batch = self.take()
            # None: ended (the client hung up, or the process is shutting down).
            data = self._own(batch) if batch is not None else None
        ending = self._ending()
        if ending:
            yield ending

    @contextmanager
    def _write_deadline(self) -> Iterator[None]:
        """Drop the viewer if the server's write of what we yield takes too long."""
        timer = gevent.get_hub().loop.timer(self.rules.write_timeout_s)
        # The timer fires in the event loop, where nothing may block: drop in a greenlet.
        timer.start(gevent.spawn, self._drop_stalled)
        try:
            yield
        finally:
            timer.stop()
            timer.close()

    # --- ending -------------------------------------------------------------------------

    def _drop_stalled(self) -> None:
        if self._released:
            return
        log.warning(
            logfmt.event(
                "stream.drop",
                reason="stalled",
                client=self.client,
                route=self.route,
                timeout_s=self.rules.write_timeout_s,
            )
        )
        self.end()
        if self.sock is not None:
            # Shutting the socket down fails the stuck write, and the server closes us.
            _shutdown(self.sock, socket.SHUT_RDWR)

    def _watch_for_hangup(self) -> None:
        """Notice the client leaving at once, not at the second write after it left.

        A readable SSE socket means the client hung up. One event-loop watcher per stream,
        and no greenlet until something happens.
        """
        self._watcher = gevent.get_hub().loop.io(self.sock.fileno(), 1)  # type: ignore[union-attr]
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        # Runs in the event loop, where nothing may block: look in a greenlet of its own.
        self._watcher.stop()
        gevent.spawn(self._check_hangup)

    def _check_hangup(self) -> None:
        if self._released:
            return
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)  # type: ignore[union-attr]
        except OSError:
            data = b""  # reset by peer
        if not data:  # more bytes would be pipelining: not a hang-up; stop watching
            self.end()

    def _release(self) -> None:
        if self._released:
            return
        self.end()
        if self._free(socket.SHUT_RD):
            log.info(
                logfmt.event(
                    "stream.close",
                    client=self.client,
                    route=self.route,
                    symbols=sum(t.isupper() for t in self.topics),
                    duration_s=round(time.monotonic() - self.opened, 3),
                    events=self.delivered,
                    bytes=self.sent_bytes,
                    open=self.broker.open_streams,
                )
            )

    def _free(self, how: int) -> bool:
        """Free the stream's slot, timers and watcher and shut its socket down ``how``;
        return whether the broker still counted it (False: freed before)."""
        self._released = True
        if self._lifetime is not None:
            self._lifetime.kill(block=False)
        if self._watcher is not None:
            # Before the socket is closed and its descriptor reused.
            self._watcher.stop()
            self._watcher.close()
        if self.sock is not None:
            # A stream's connection is never reused: once the server has written the
            # final chunk it closes, instead of idling in keep-alive (which would also
            # hold a shutting-down worker for the whole keep-alive timeout).
            _shutdown(self.sock, how)
        return self.broker.unsubscribe(self)


@functools.lru_cache(maxsize=4)
def _compressed_hello(hello: bytes) -> bytes:
    """The hello compressed on its own: the same for every stream of a process."""
    return compression.standalone(hello)


def _sse_response(body: Iterator[bytes] | Connection, gzip: bool = False) -> Response:
    # direct_passthrough: the server gets our body as it is, without Werkzeug's wrappers.
    response = Response(body, mimetype="text/event-stream", direct_passthrough=True)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Vary"] = "Accept-Encoding"
    if gzip:
        response.headers["Content-Encoding"] = "gzip"
    # nginx (and routers built on it) buffer responses unless told not to.
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _shutdown(sock: socket.socket, how: int) -> None:
    """Shut the connection down (``how``: SHUT_RD or SHUT_RDWR) without closing it.

    Done through a duplicate descriptor: gevent's own ``shutdown`` cancels any greenlet
    waiting on the socket with EBADF, which gunicorn logs as an unexpected error. Shut
    down underneath it, a stuck write fails with a quiet EPIPE instead.
    """
    try:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as dup:
            dup.shutdown(how)
    except OSError:
        pass  # already gone
