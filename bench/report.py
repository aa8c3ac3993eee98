"""Print the Markdown tables of docs/performance.md from a bench/run.py results file.

Run: python3 bench/report.py bench/results/<date>.json
One table per N. Ratios are the peer's figure divided by ours (the /stream row) at the same N.
Wire is what arrived on the sockets (HTTP framing and gzip included), decoded the SSE body
after de-chunking and inflating, both per viewer held per second of the window.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ("ours", "ours-per-symbol", "bare", "express", "starlette", "flask-sse")


def fmt(x: float | None, digits: int = 0) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def rank(server: str) -> tuple[int, int]:
    """Where a server's row goes: by ORDER, a -gzip variant right after its base."""
    base = server.removesuffix("-gzip")
    return (ORDER.index(base) if base in ORDER else len(ORDER), base != server)


def kb(x: float | None) -> str:
    """Bytes per viewer per second, in kB (runs from before loadgen counted them: n/a)."""
    return "n/a" if x is None else f"{x / 1000:,.2f}"


def ratio(x: float | None, ours: float | None) -> str:
    if x is None or not ours:
        return ""
    return f" ({x / ours:.1f}x)"


def table(runs: list[dict]) -> list[str]:
    ours = next((r for r in runs if r["server"] == "ours" and "error" not in r), None)
    lines = [
        (
            "| server | viewers held | updates (% of expected) "
            "| by tick: % delivered of ticks published/nominal "
            "| p50 ms | p99 ms (x ours) | server CPU | CPU-s per 100k (x ours) "
            "| MB per 1k (x ours) | wire kB/viewer/s | decoded kB/viewer/s | loadgen CPU |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: rank(r["server"])):
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error']} |||||||||||")
            continue
        c = r["loadgen"]["connections"]
        held = f"{r['held']:,}"
        if c["pending"]:
            held += f" (+{c['pending']:,} pending)"
        failed = (
            c["failed_connect"] + c["failed_before_headers"] + c["closed_by_server"]
        )
        if failed:
            held += f" ({failed:,} failed)"
        is_ours = r["server"] == "ours"
        ticks = r["loadgen"]["by_tick"]
        cpu100k = r["cpu_s_per_100k"]
        mb = r["mb_per_1k"]
        lines.append(
            f"| {r['label'].replace('<', '&lt;').replace('>', '&gt;')} | {held} | {r['pct_expected']:.2f} | {r['pct_by_tick']:.2f} "
            f"of {ticks['ticks_in_window']}/{ticks['nominal_ticks']} "
            f"| {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])}"
            f"{'' if is_ours else ratio(r['p99_ms'], ours and ours['p99_ms'])} "
            f"| {r['cpu_pct']:.0f}% "
            f"| {fmt(cpu100k, 2)}"
            f"{'' if is_ours else ratio(cpu100k, ours and ours['cpu_s_per_100k'])} "
            f"| {fmt(mb, 1)}{'' if is_ours else ratio(mb, ours and ours['mb_per_1k'])} "
            f"| {kb(r.get('wire_bytes_per_viewer_s'))} "
            f"| {kb(r.get('decoded_bytes_per_viewer_s'))} "
            f"| {r['loadgen_cpu_pct']:.0f}% |"
        )
    return lines


def main(path: str) -> None:
    doc = json.loads(Path(path).read_text())
    by_n: dict[int, list[dict]] = {}
    for run in doc["runs"]:
        by_n.setdefault(run["n"], []).append(run)
    for n in sorted(by_n):
        print(f"### {n:,} viewers\n")
        print("\n".join(table(by_n[n])))
        print()


if __name__ == "__main__":
    main(sys.argv[1])
