"""Draw docs/img/performance.png from a bench/run.py results file: p99 latency, CPU-seconds
per 100,000 delivered updates, and bytes on the wire per viewer per second against viewers,
one line per server.

Run (bench/run.py does it): bench/.venv-tools/bin/python bench/plot.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = {
    "ours": ("tab:blue", "o", "-"),
    "ours-per-symbol": ("tab:blue", "s", "--"),
    "express": ("tab:green", "^", "-"),
    "flask-sse": ("tab:red", "v", "-"),
    "starlette": ("tab:purple", "D", "-"),
    "bare": ("black", "x", ":"),
    "ours-gzip": ("tab:blue", "o", "-."),
    "express-gzip": ("tab:green", "^", "-."),
}


def saturated(run: dict) -> bool:
    """Viewers not all held, updates lost, or the feed itself starved of CPU.

    Our feed jitters each tick, so for ours only delivery by tick counts; the peers tick
    exactly once per second, so the nominal rate counts too.
    """
    ticks = run["loadgen"]["by_tick"]
    return (
        run["held"] < run["n"]
        or run["pct_by_tick"] < 99
        or ticks["ticks_in_window"] < 0.95 * ticks["nominal_ticks"]
        or (not run["server"].startswith("ours") and run["pct_expected"] < 99)
    )


def main(results: str, out: str) -> None:
    doc = json.loads(Path(results).read_text())
    series: dict[str, list[dict]] = defaultdict(list)
    labels = {}
    for run in doc["runs"]:
        if "error" in run or not run.get("held"):
            continue
        series[run["server"]].append(run)
        labels[run["server"]] = run["label"]
    fig, (lat, cpu, wire) = plt.subplots(1, 3, figsize=(17, 5.6))
    for name, runs in series.items():
        runs.sort(key=lambda r: r["n"])
        color, marker, line = STYLE.get(name, (None, "o", "-"))
        kw = {
            "color": color,
            "marker": marker,
            "linestyle": line,
            "label": labels[name],
        }
        lat.plot([r["n"] for r in runs], [r["p99_ms"] for r in runs], **kw)
        pts = [r for r in runs if r["cpu_s_per_100k"]]
        cpu.plot([r["n"] for r in pts], [r["cpu_s_per_100k"] for r in pts], **kw)
        sent = [r for r in runs if r.get("wire_bytes_per_viewer_s")]
        wire.plot(
            [r["n"] for r in sent],
            [r["wire_bytes_per_viewer_s"] / 1000 for r in sent],
            **kw,
        )
        for r in runs:
            if saturated(r):
                for ax, y in ((lat, r["p99_ms"]), (cpu, r["cpu_s_per_100k"])):
                    ax.plot(r["n"], y, "o", ms=14, mfc="none", mec=color, alpha=0.6)
    lat.axhline(200, color="grey", linestyle="--", linewidth=1)
    lat.text(
        11000, 210, "target for ours at 10k: p99 < 200 ms", fontsize=8, color="grey"
    )
    cpu.axhline(0.45, color="grey", linestyle="--", linewidth=1)
    cpu.text(11000, 0.47, "target for ours: <= 0.45", fontsize=8, color="grey")
    # Results from before loadgen counted wire bytes have none.
    measured = any(line.get_xdata().size for line in wire.lines)
    if measured:
        wire.axhline(2.5, color="grey", linestyle="--", linewidth=1)
        wire.text(
            11000, 2.7, "target for ours (gzip): <= 2.5 kB/s", fontsize=8, color="grey"
        )
    lat.set_yscale("log")
    lat.set_ylabel("p99 latency, tick to receipt (ms, log scale)")
    cpu.set_yscale("log")
    cpu.set_ylabel("server CPU-seconds per 100,000 delivered updates (log scale)")
    if measured:
        wire.set_yscale("log")
    else:
        wire.text(
            0.5, 0.5, "not measured in this run", transform=wire.transAxes, ha="center"
        )
    wire.set_ylabel("bytes on the wire per viewer per second (kB, log scale)")
    for ax, title in (
        (lat, "p99 latency"),
        (cpu, "CPU per delivered update"),
        (wire, "bytes per viewer"),
    ):
        ax.set_xlabel(
            "concurrent viewers (N); circled: saturated (viewers or updates lost)"
        )
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = cpu.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)
    env = doc["environment"]
    fig.suptitle(
        f"ticker-10 on one core ({env['cpu']}), {doc['settings']['window_s']:.0f} s window, "
        f"{env['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
