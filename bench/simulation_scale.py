"""Peak memory and time of `fedpeft simulate` at two client counts, side by side.

Each count runs as its own `fedpeft simulate` process (Flower's simulation engine, the
bundled MiniLM, the synthetic data with one natural client per generated user); a
sampler adds up the resident memory of the whole process tree (server, Ray, workers)
twice a second. The same clients train per round at every count, so what grows with the
count is what fedpeft keeps per client: the target is a peak within 10% across counts.

    .venv/bin/python bench/simulation_scale.py [--clients 100 1000] [--clients-per-round 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (shared pages counted per process)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run(clients: int, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"clients-{clients}"
    cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", "--clients", str(clients), "--rounds", str(args.rounds),
           "--clients-per-round", str(args.clients_per_round), "--report-clients", str(args.report_clients),
           "--no-centralized-baseline", "--out", str(out)]
    peak, start = 0, time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.5)
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"{clients} clients failed:\n" + "".join(lines[-30:]))
    from fedpeft.core.trust.json_reader import read_json  # read bounded, as every JSON fedpeft reads
    summary = read_json(out / "summary.json")
    return {"clients": clients, "peak_gb": peak / 1e9, "seconds": time.perf_counter() - start,
            "global": summary["global_accuracy"], "reported": summary["clients_reported"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--clients-per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report-clients", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedpeft-scale-") as tmp:
        rows = []
        for clients in args.clients:
            rows.append(run(clients, args, Path(tmp)))
            row = rows[-1]
            print(f"{row['clients']:6d} clients  peak {row['peak_gb']:5.2f} GB  {row['seconds']:6.0f} s  "
                  f"global {row['global']:.3f} ({row['reported']} reported)", flush=True)
    ratio = rows[-1]["peak_gb"] / rows[0]["peak_gb"]
    print(f"peak at {rows[-1]['clients']} clients / at {rows[0]['clients']}: {ratio:.2f}x "
          f"(target: within 10%: {'met' if abs(ratio - 1) < 0.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
