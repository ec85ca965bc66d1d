"""`--track tensorboard|mlflow`: a run's record written where those tools read it, as local
files (no tracking server): per-round metrics (loss, accuracy, bytes, accepted and rejected
deltas by reason, epsilon), the final and personalization figures, the plots, and for MLflow
the published adapter as an artifact tagged with its base and release.

TensorBoard: event files in `RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`).
MLflow: a SQLite store `RUN/mlflow.db` with artifacts in `RUN/mlartifacts/`
(`mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`); MLflow 3 keeps its plain-file
store in maintenance mode, so the local store is SQLite. Both are optional installs
(`pip install -e '.[track]'`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from fedpeft.core.errors import ConfigError
from fedpeft.core.trust.files import UnreadableFile, read_small, regular_file_size
from fedpeft.core.trust.json_reader import parse_json_object

TRACKERS = ("tensorboard", "mlflow")
ROUND_FIELDS = ("train_loss", "val_accuracy", "val_loss", "bytes_up", "bytes_down", "replies", "failures", "accepted",
                "capped_weights", "epsilon", "seconds")
FINAL_FIELDS = ("initial_accuracy", "global_accuracy", "personalized_accuracy", "local_only_accuracy",
                "centralized_accuracy", "bytes_up_per_client_round")
METRICS_BYTES = 64 << 20
PLOTS = ("curves.png", "clients.png")  # the plots a run writes (server/federation.py)
PLOT_BYTES = 8 << 20
ADAPTER_BYTES = 1 << 30


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def round_scalars(record: dict) -> dict[str, float]:
    """One round's numbers: the fields above, and rejected deltas in all and by reason."""
    scalars = {name: value for name in ROUND_FIELDS if (value := _number(record.get(name))) is not None}
    rejected = record.get("rejected") if isinstance(record.get("rejected"), dict) else {}
    scalars["rejected"] = float(sum(v for v in rejected.values() if _number(v) is not None))
    scalars.update({f"rejected/{reason}": float(count) for reason, count in rejected.items()
                    if _number(count) is not None})
    return scalars


def _round(record: dict, previous: int) -> int:
    value = record.get("round")
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31 else previous + 1


def _files(folder: Path, names: tuple[str, ...] | None, limit: int) -> list[Path]:
    """The run's own files in `folder` (`names`, or every file), regular and within `limit`
    bytes: a planted link or an oversized image is left out, never followed or decoded."""
    candidates = [folder / name for name in names] if names else sorted(folder.iterdir()) if folder.is_dir() else []
    kept = []
    for path in candidates:
        try:
            regular_file_size(path, limit, follow_links=False)
        except UnreadableFile:
            continue
        kept.append(path)
    return kept


def final_scalars(summary: dict) -> dict[str, float]:
    return {name: value for name in FINAL_FIELDS if (value := _number(summary.get(name))) is not None}


def read_run(run: Path) -> tuple[list[dict], dict]:
    """(per-round records, summary) of a finished run folder, read with the guarded JSON reader."""
    run = Path(run)
    if not (run / "summary.json").is_file():
        raise ConfigError(f"{run} holds no finished run (no summary.json)")
    summary = parse_json_object(read_small(run / "summary.json"), "summary.json")
    lines = read_small(run / "metrics.jsonl", METRICS_BYTES).splitlines() if (run / "metrics.jsonl").is_file() else []
    return [parse_json_object(line, "metrics.jsonl") for line in lines if line.strip()], summary


def track(run: Path, kind: str) -> Path:
    """Write the run's record for `kind`; returns where it went."""
    rounds, summary = read_run(run)
    if kind == "tensorboard":
        return _tensorboard(Path(run), rounds, summary)
    if kind == "mlflow":
        return _mlflow(Path(run), rounds, summary)
    raise ConfigError(f"--track {kind!r}: choose one of {', '.join(TRACKERS)}")


def _tensorboard(run: Path, rounds: list[dict], summary: dict) -> Path:
    import matplotlib.image

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("--track tensorboard needs TensorBoard: pip install -e '.[track]'") from exc
    folder = run / "tensorboard"
    writer = SummaryWriter(str(folder))
    last = 0
    for record in rounds:
        last = _round(record, last)
        for name, value in round_scalars(record).items():
            writer.add_scalar(f"round/{name}", value, last)
    for name, value in final_scalars(summary).items():
        writer.add_scalar(f"final/{name}", value, last)
    writer.add_text("release", f"base {summary.get('base_id')}, release {summary.get('release_id')}", last)
    for plot in _files(run, PLOTS, PLOT_BYTES):
        image = matplotlib.image.imread(plot)
        writer.add_image(f"plots/{plot.stem}", image[..., :3] if image.ndim == 3 else image, last,
                         dataformats="HWC" if image.ndim == 3 else "HW")
    writer.close()
    return folder


def _mlflow(run: Path, rounds: list[dict], summary: dict) -> Path:
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigError("--track mlflow needs MLflow: pip install -e '.[track]'") from exc
    log = logging.FileHandler(run / "run.log")  # MLflow's and its store migrations' chatter: the run's log
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).handlers = [log]
        logging.getLogger(name).propagate = False
    store = run / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{store.resolve()}")
    experiment = mlflow.get_experiment_by_name("fedpeft")
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        "fedpeft", artifact_location=(run / "mlartifacts").resolve().as_uri())
    tags = {"fedpeft.base_id": str(summary.get("base_id")), "fedpeft.release_id": str(summary.get("release_id")),
            "fedpeft.adapter_method": str(summary.get("adapter_method"))}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run.name, tags=tags):
        mlflow.log_params({"rounds": summary.get("rounds"), "clients": summary.get("clients"),
                           "quantization": summary.get("quantization")})
        step = 0
        for record in rounds:
            step = _round(record, step)
            mlflow.log_metrics({name.replace("/", "."): value for name, value in round_scalars(record).items()},
                               step=step)
        mlflow.log_metrics(final_scalars(summary))
        for plot in _files(run, PLOTS, PLOT_BYTES):
            mlflow.log_artifact(str(plot), "plots")
        mlflow.log_artifact(str(run / "summary.json"))  # the personalization table and every other figure
        for path in _files(run / "adapter", None, ADAPTER_BYTES):
            mlflow.log_artifact(str(path), "adapter")
    return store
