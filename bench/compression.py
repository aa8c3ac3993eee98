"""What gzip costs and saves on the table's stream, for each epoch length, level and window.

    python3 bench/compression.py [--seconds 60]

Captures real frames: it starts the app as the benchmark runs it (ticker-10, FRAME_MS=100),
reads ``/stream`` plain for ``--seconds`` and keeps each HTTP chunk (one chunk is one frame:
the fan-out writes each frame as one chunk). Then, offline and single-threaded, it runs each
frame through the app's own scheme (``ticker.delivery.compression``: one shared compressor
per audience, a full flush at each epoch's end, frames compressed on their own until a viewer
joins) with other parameters, and reports for each:

- ``ratio``: bytes in / bytes out for a viewer that stays joined (the steady state);
- ``cpu_us_per_frame``: compression CPU per frame, paid once per audience, not per viewer;
- ``join_ratio`` and ``join_frames``: what a new viewer gets until it joins (frames
  compressed on their own) and for how long at most;
- ``compressor_kb``: zlib's memory for the shared compressor, (1 << (wbits + 2)) +
  (1 << (memLevel + 9)) bytes, once per audience.

Writes ``bench/results/compression-<date>.json``; docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support import Server  # the tests' way of starting the app

from ticker.delivery import compression

ENV = {
    "TICKER_SYMBOLS": "10",
    "TICKER_INTERVAL": "1.0",
    "FRAME_MS": "100",
    "HEARTBEAT_S": "15",
    "TICKER_NEWS_S": "20",
    "MAX_STREAMS_PER_CLIENT": "0",
}
LEVELS = (1, 6, 9)
WINDOWS = ((15, 8), (13, 6), (12, 5))  # (wbits, memLevel)
EPOCHS = (10, 50, 200, 1_000_000)  # frames; the last: one epoch for the whole capture


def capture(seconds: float) -> list[bytes]:
    """Each chunk of a plain ``/stream`` for ``seconds``: the frames as the app sends them."""
    log = ROOT / "bench" / "results" / "raw" / "compression-capture.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with Server.procfile(log, env=ENV).start() as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: bench\r\n\r\n")
        sock.settimeout(5)
        buffer, frames = b"", []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                buffer += sock.recv(65536)
            except TimeoutError:
                continue
            if not frames and b"\r\n\r\n" in buffer:
                buffer = buffer.partition(b"\r\n\r\n")[2]
                frames.append(b"")  # marks the headers as read
            while frames:
                size, sep, rest = buffer.partition(b"\r\n")
                if not sep or len(rest) < int(size, 16) + 2:
                    break
                n = int(size, 16)
                frames.append(rest[:n])
                buffer = rest[n + 2 :]
        sock.close()
    # Drop the hello and the snapshot: the first two chunks go out before any frame.
    return [f for f in frames[3:] if f]


def measure(frames: list[bytes], level: int, wbits: int, mem: int, epoch: int) -> dict:
    comp = zlib.compressobj(level, zlib.DEFLATED, -wbits, mem)
    out = 0
    started = time.process_time()
    for i, frame in enumerate(frames, 1):
        flush = zlib.Z_FULL_FLUSH if i % epoch == 0 else zlib.Z_SYNC_FLUSH
        out += len(comp.compress(frame)) + len(comp.flush(flush))
    cpu = time.process_time() - started
    alone = sum(len(compression.standalone(f)) for f in frames)
    size = sum(map(len, frames))
    return {
        "level": level,
        "wbits": wbits,
        "mem_level": mem,
        "epoch_frames": epoch,
        "ratio": round(size / out, 2),
        "cpu_us_per_frame": round(cpu * 1e6 / len(frames), 1),
        "join_ratio": round(size / alone, 2),
        "join_frames": min(epoch, len(frames)),
        "compressor_kb": ((1 << (wbits + 2)) + (1 << (mem + 9))) // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    frames = capture(args.seconds)
    rows = [
        measure(frames, level, wbits, mem, epoch)
        for level in LEVELS
        for wbits, mem in WINDOWS
        for epoch in EPOCHS
    ]
    chosen = (compression.LEVEL, compression.WBITS, compression.EPOCH_FRAMES)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    doc = {
        "command": f"python3 bench/compression.py --seconds {args.seconds:g}",
        "commit": commit,
        "frames": len(frames),
        "frame_bytes_mean": round(sum(map(len, frames)) / len(frames)),
        "chosen": dict(zip(("level", "wbits", "epoch_frames"), chosen, strict=True)),
        "rows": rows,
    }
    today = datetime.date.today().isoformat()
    out = args.out or ROOT / "bench" / "results" / f"compression-{today}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(frames)} frames, {doc['frame_bytes_mean']} bytes each on average")
    print("level wbits epoch  ratio  us/frame  join_ratio  compressor_kb")
    for r in rows:
        print(
            f"{r['level']:5} {r['wbits']:5} {r['epoch_frames']:7} {r['ratio']:6} "
            f"{r['cpu_us_per_frame']:9} {r['join_ratio']:11} {r['compressor_kb']:14}"
        )
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)
    os.sync()


if __name__ == "__main__":
    main()
