"""What the run-grid benchmarks share: one `fedpeft simulate` per run folder, reused once finished."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def simulate_once(work: Path, name: str, arguments: list[str]) -> dict:
    """`fedpeft simulate ARGUMENTS --restart` in `work`, its console in `work/NAME.log`,
    unless `work/NAME` already holds a summary; the run's summary.json."""
    out = work / name
    if not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", *arguments, "--restart"]
        start = time.perf_counter()
        with open(work / f"{name}.log", "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work).returncode != 0:
                raise SystemExit(f"{name} failed: see {work / f'{name}.log'}")
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads((out / "summary.json").read_text())
