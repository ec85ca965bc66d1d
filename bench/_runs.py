"""What the run-grid benchmarks share: one `fedpeft simulate` per run folder, reused once
finished, and one JSON table per grid that later invocations add to."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path

from fedpeft.core.trust.json_reader import parse_json


def simulate_once(work: Path, name: str, arguments: list[str]) -> dict:
    """`fedpeft simulate ARGUMENTS --restart` in `work`, its console in `work/NAME.log` and its
    wall time in `work/NAME.seconds`, unless `work/NAME` already holds a summary; the run's
    summary.json."""
    out = work / name
    if not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "fedpeft.cli", "simulate", *arguments, "--restart"]
        start = time.perf_counter()
        with open(work / f"{name}.log", "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work).returncode != 0:
                raise SystemExit(f"{name} failed: see {work / f'{name}.log'}")
        (work / f"{name}.seconds").write_text(f"{time.perf_counter() - start:.0f}")
        print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return parse_json((out / "summary.json").read_bytes(), "summary.json", allow_nonfinite=True)


def round_rows(out: Path) -> list[dict]:
    """A finished run's metrics.jsonl (this benchmark's own output): one dict a round."""
    return [parse_json(line, "metrics.jsonl", allow_nonfinite=True)
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def merged_rows(table: Path, rows: list[dict], key: Callable[[dict], Hashable]) -> list[dict]:
    """`rows` written into the JSON list at `table` over its earlier rows of the same key;
    the whole list, earlier rows first."""
    earlier = {key(r): r for r in parse_json(table.read_bytes(), table.name, allow_nonfinite=True)} if table.is_file() else {}
    merged = list({**earlier, **{key(r): r for r in rows}}.values())
    table.write_text(json.dumps(merged, indent=1))
    return merged
