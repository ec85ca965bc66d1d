"""Client datasets: the user's CSV/JSONL (or the embedded synthetic set), partitioned.

Partitioning uses flwr-datasets (`NaturalIdPartitioner` by `client_id`,
`IidPartitioner`, `DirichletPartitioner` over labels). Each client then splits its own
partition into train/validation/test, so personalization is measured on data the
client never trained on.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Iterator
from contextlib import redirect_stderr
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fedpeft.core.choices import PARTITIONERS
from fedpeft.core.errors import DataError
from fedpeft.core.trust.files import UnreadableFile, read_small
from fedpeft.core.trust.json_reader import JSONRefused, parse_json_object

from . import synthetic_data, synthetic_next_word

SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLITS = ("train", "val", "test")  # a device node's own rows may name theirs (own_data)
MIN_CLIENT_EXAMPLES = 5
MAX_DATA_BYTES = 2 * 1024**3  # a data file is read whole: refuse one larger than this before reading
MAX_ROW_BYTES = 1024 * 1024   # one JSONL row; a CSV field is held to the csv module's limit (128 KiB)



@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from and how it is cut into clients; sent to every node."""

    source: str = "synthetic"  # "synthetic" or a path to a .csv / .jsonl file
    partitioner: str = "natural"
    num_clients: int = 8
    alpha: float = 0.5
    seed: int = 0
    labels: tuple[str, ...] = ()  # empty: the sorted labels found in the data
    task: str = "seq-cls"  # causal-lm: rows have no label; "synthetic" is the next-word corpus

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "labels": list(self.labels)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataSpec:
        """The spec a job carries (the server's text): the guarded reader, and only known keys."""
        values = parse_json_object(text, "the job's data spec")
        try:
            return cls(**{**values, "labels": tuple(values["labels"])})
        except (KeyError, TypeError) as exc:
            raise DataError(f"the job's data spec does not fit DataSpec ({exc})") from None


@dataclass
class TextSplit:
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def pooled(splits: Iterable[TextSplit]) -> TextSplit:
    """The splits' rows in one split, in order (the centralized reference, a root set, a shared test set)."""
    rows = TextSplit()
    for split in splits:
        rows.texts += split.texts
        rows.labels += split.labels
    return rows


def batches(split: TextSplit, batch_size: int, order: list[int]) -> list[tuple[list[str], list[int]]]:
    return [
        ([split.texts[i] for i in order[s:s + batch_size]], [split.labels[i] for i in order[s:s + batch_size]])
        for s in range(0, len(order), batch_size)
    ]


def training_batches(split: TextSplit, batch_size: int, epochs: int, seed: int) -> Iterator[tuple[list[str], list[int]]]:
    """Each epoch's batches in a fresh shuffled order: the same sequence for the PyTorch
    loop and the device trainer given the same seed."""
    rng = random.Random(seed)
    for _ in range(epochs):
        order = list(range(len(split)))
        rng.shuffle(order)
        yield from batches(split, batch_size, order)


@dataclass
class ClientData:
    client: str
    train: TextSplit
    val: TextSplit
    test: TextSplit


def read_rows(path: str | Path, columns: tuple[str, ...] = ("text", "label")) -> list[dict[str, str]]:
    """Rows of a CSV or JSONL file with the required `columns` and optional `client_id`."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .jsonl")
    raw = _read_text(path)
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(raw.splitlines())
        try:
            rows = list(reader)
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(): one line, not csv's traceback
            raise DataError(f"{path}: line {reader.line_num} is not usable CSV ({exc})") from None
    else:
        rows = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(parse_json_object(line, f"line {number}", limit=MAX_ROW_BYTES))
            except JSONRefused as exc:
                raise DataError(f"{path}: line {number} is not a usable JSON object: {exc.detail}") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    for number, row in enumerate(rows, start=1):
        for column in columns:
            if row.get(column) in (None, ""):
                raise DataError(f"{path}: row {number} has no {column!r} column value")
    return [{k: str(v) for k, v in row.items() if k in ("text", "label", "client_id", "split")} for row in rows]


def _read_text(path: Path) -> str:
    """A data file's text, within MAX_DATA_BYTES; an unreadable file is one DataError."""
    try:
        return read_small(path, MAX_DATA_BYTES).decode("utf-8")
    except UnreadableFile as exc:
        raise DataError(f"{path}: cannot read file ({exc.args[0].split(': ', 1)[-1]})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from exc


def read_messages(path: str | Path) -> TextSplit:
    """A causal LM's rows (a device's own text): a .txt file, one message per line (blank
    lines skipped), or a CSV/JSONL with a `text` column. No labels: 0 stands in."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        texts = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
        if not texts:
            raise DataError(f"{path}: no rows")
    else:
        texts = [row["text"] for row in read_rows(path, ("text",))]
    return TextSplit(texts, [0] * len(texts))


def label_names(rows: list[dict[str, str]], declared: tuple[str, ...]) -> list[str]:
    found = sorted({r["label"] for r in rows})
    if not declared:
        return found
    unknown = [label for label in found if label not in declared]
    if unknown:
        raise DataError(f"unknown label(s) {unknown[:5]}; the configured labels are {list(declared)}")
    return list(declared)


def labelled_split(rows: list[dict[str, str]], labels: list[str]) -> TextSplit:
    """Rows (a device's own file) as a split over a model's labels; an unknown label is refused."""
    label_names(rows, tuple(labels))
    index = {label: i for i, label in enumerate(labels)}
    return TextSplit([row["text"] for row in rows], [index[row["label"]] for row in rows])


@lru_cache(maxsize=4)
def load_rows(spec: DataSpec) -> tuple[tuple[dict[str, str], ...], tuple[str, ...]]:
    """All rows and the label list of a data spec (cached: simulated clients share it)."""
    if spec.task == "causal-lm":  # next words: the text is its own target, rows carry no label
        rows = (synthetic_next_word.generate(spec.num_clients, spec.seed) if spec.source == "synthetic"
                else read_rows(spec.source, ("text",)))
        return tuple(rows), ()
    if spec.source == "synthetic":
        rows = synthetic_data.generate(spec.num_clients, spec.seed)
        declared = spec.labels or tuple(synthetic_data.LABELS)
    else:
        rows = read_rows(spec.source)
        declared = spec.labels
    return tuple(rows), tuple(label_names(rows, declared))


def num_partitions(spec: DataSpec) -> int:
    rows, _ = load_rows(spec)
    if spec.partitioner == "natural":
        return len({r.get("client_id") for r in rows})
    return spec.num_clients


@lru_cache(maxsize=8)
def _partitioner(spec: DataSpec):
    """The spec's flwr-datasets partitioner, built once per process: it computes every
    partition's rows on first use and then only selects them (building it per client cost
    2 s a client at 1,000 clients)."""
    rows, _ = load_rows(spec)
    if spec.partitioner == "natural" and any(not r.get("client_id") for r in rows):
        raise DataError("natural partitioning needs a 'client_id' value on every row")
    # Imported here: a config check (core/config.py) needs DataSpec, not datasets' 2 s import.
    from datasets import Dataset, disable_progress_bars
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

    disable_progress_bars()  # partitioning a small table is instant; its bars only clutter the log
    table = Dataset.from_dict({
        "label": [r.get("label", "") for r in rows],
        "client_id": [r.get("client_id", "") for r in rows],
        "index": list(range(len(rows))),
    })
    if spec.partitioner == "natural":
        partitioner = NaturalIdPartitioner(partition_by="client_id")
    elif spec.partitioner == "iid":
        partitioner = IidPartitioner(num_partitions=spec.num_clients)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=spec.num_clients, partition_by="label", alpha=spec.alpha,
            min_partition_size=0, seed=spec.seed,
        )
    partitioner.dataset = table
    return partitioner


def _partition_indices(spec: DataSpec, partition_id: int) -> tuple[str, list[int]]:
    if spec.partitioner not in PARTITIONERS:
        raise DataError(f"unknown partitioner {spec.partitioner!r}; choose one of {PARTITIONERS}")
    partitioner = _partitioner(spec)
    with open(os.devnull, "w") as sink, redirect_stderr(sink):  # NaturalIdPartitioner draws a tqdm bar
        total = partitioner.num_partitions
        if not 0 <= partition_id < total:
            raise DataError(f"partition {partition_id} does not exist: the data has {total} client partitions")
        part = partitioner.load_partition(partition_id)
    name = part["client_id"][0] if spec.partitioner == "natural" and len(part) else f"partition-{partition_id}"
    return name, sorted(part["index"])


@lru_cache(maxsize=256)
def client_data(spec: DataSpec, partition_id: int) -> ClientData:
    """Train/validation/test splits of one client, deterministic for the spec's seed."""
    rows, labels = load_rows(spec)
    name, indices = _partition_indices(spec, partition_id)
    return _client_splits(rows, labels, name, _seeded_cut(indices, name, spec.seed))


def own_data(path: str | Path, spec: DataSpec, name: str) -> ClientData:
    """A device node's own rows (its data file, never the server's): rows that name their
    `split` (train, val or test, on every row) keep it; otherwise the seeded 60/20/20 cut
    every client makes of its partition. Labels are the job's (`spec.labels`)."""
    rows = read_rows(path, ("text",) if spec.task == "causal-lm" else ("text", "label"))
    named = [row.get("split") for row in rows]
    if any(named):
        wrong = sorted({str(v) for v in named if v not in SPLITS})
        if wrong:
            raise DataError(f"{path}: split must be one of {list(SPLITS)} on every row, found {wrong[:3]}")
        cuts = tuple([i for i, split in enumerate(named) if split == want] for want in SPLITS)
    else:
        cuts = _seeded_cut(list(range(len(rows))), name, spec.seed)
    if spec.task != "causal-lm":
        label_names(rows, spec.labels)  # an unknown label: refused by name
    return _client_splits(rows, spec.labels, name, cuts)


def _seeded_cut(indices: list[int], name: str, seed: int) -> tuple[list[int], list[int], list[int]]:
    """A client's rows cut 60/20/20 into train/validation/test after a shuffle seeded by its name."""
    if len(indices) < MIN_CLIENT_EXAMPLES:
        raise DataError(
            f"client {name!r} has {len(indices)} examples; at least {MIN_CLIENT_EXAMPLES} are needed "
            "for its train/validation/test split"
        )
    indices = list(indices)
    random.Random(f"{seed}/{name}").shuffle(indices)
    n_train = int(len(indices) * SPLIT_FRACTIONS[0])
    n_val = max(1, int(len(indices) * SPLIT_FRACTIONS[1]))
    return indices[:n_train], indices[n_train:n_train + n_val], indices[n_train + n_val:]


def _client_splits(rows, labels, name: str, cuts) -> ClientData:
    label_index = {label: i for i, label in enumerate(labels)}
    splits = [  # a causal LM's rows have no label: 0 stands in
        TextSplit([rows[i]["text"] for i in part], [label_index.get(rows[i].get("label"), 0) for i in part])
        for part in cuts
    ]
    return ClientData(name, *splits)
