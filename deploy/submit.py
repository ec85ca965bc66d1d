"""Submit the federation to a running SuperLink and follow it to the end.

Used by `fedpeft deploy local` and, on a SuperLink's machine, by `fedpeft deploy run`:
the run's settings go into a TOML file the ServerApp reads (its path travels in Flower's
run config), and the Flower app submitted is fedpeft's own (deploy/flower_app).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from fedpeft.core.config import BUNDLED_MODEL, LM_ALIASES, FederationConfig
from fedpeft.core.errors import FedPeftError
from fedpeft.core.trust.atomic import write_atomic
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object, read_json
from fedpeft.server.run_log import progress_line

from .flower import FlowerCli


def absolute_paths(config: FederationConfig) -> FederationConfig:
    """The ServerApp runs in another process and folder: give it absolute paths."""
    def absolute(value: str) -> str:
        return str(Path(value).resolve()) if value else value

    return config.with_overrides(**{
        "run.out": absolute(config.run.out),
        "security.operator_key": absolute(config.security.operator_key),
        "security.keyring": absolute(config.security.keyring),
        "model.path": config.model.path if config.model.path in (BUNDLED_MODEL, *LM_ALIASES) else absolute(config.model.path),
        "data.source": absolute(config.data.source) if Path(config.data.source).is_file() else config.data.source,
    })


def write_run_files(work: Path, config: FederationConfig) -> tuple[Path, Path]:
    """The run's settings file and the Flower app folder that `flwr run` bundles."""
    settings = work / "run.toml"
    write_atomic(settings, absolute_paths(config).to_toml().encode())
    app = work / "flower_app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(
        resources.files("fedpeft.deploy").joinpath("flower_app/pyproject.toml").read_text())
    return settings, app


def wait_for_run(cli: FlowerCli, run_id: int, timeout: float, on_wait: Callable[[], None] = lambda: None) -> str:
    """Poll the run's status until it finishes; returns Flower's final status."""
    deadline = time.monotonic() + timeout
    while not (status := cli.run_status(run_id)).startswith("finished"):
        on_wait()
        if time.monotonic() > deadline:
            raise FedPeftError(f"run {run_id} still {status} after {timeout:.0f} s")
        time.sleep(2)
    return status


class MetricsFollower:
    """Prints each round's line as the ServerApp, another process, appends it to metrics.jsonl."""

    def __init__(self, path: Path, rounds: int) -> None:
        self.path, self.rounds, self.printed = path, rounds, 0

    def __call__(self) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for line in lines[self.printed:]:
            try:
                row = parse_json_object(line, str(self.path))
            except JSONRefused:
                return  # a line still being written
            print(progress_line(row, self.rounds), flush=True)
            self.printed += 1


def submit_and_wait(cli: FlowerCli, config: FederationConfig, work: Path, timeout: float,
                    on_wait: Callable[[], None] = lambda: None) -> dict:
    """Submit the run (it resumes from run.out's checkpoint if there is one), print each
    round as it completes, return the run's summary."""
    settings, app = write_run_files(work, config)
    out = Path(config.run.out)
    submitted = time.time()
    run_id = cli.submit(app, {"config": str(settings), "resume": True})
    print(f"[fedpeft] submitted run {run_id}; the ServerApp's log: "
          f"FLWR_HOME={cli.home} flwr log {run_id} {cli.CONNECTION}", flush=True)
    follow = MetricsFollower(out / "metrics.jsonl", config.federation.rounds)
    status = wait_for_run(cli, run_id, timeout, lambda: (on_wait(), follow()))
    follow()
    summary = out / "summary.json"
    if status != "finished:completed" or not summary.is_file() or summary.stat().st_mtime < submitted:
        raise FedPeftError(f"run {run_id} ended {status} without writing {summary}; the end of its ServerApp's "
                           f"log:\n{cli.run_log(run_id)[-3000:]}")
    return read_json(summary)
