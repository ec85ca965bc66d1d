"""Client data: partitions, splits, and clear errors on bad user files."""

import json

import pytest

from fedpeft.core.errors import DataError
from fedpeft.core.training.data import DataSpec, client_data, load_rows, num_partitions, read_rows
from fedpeft.core.training.synthetic_data import generate


def _write_csv(path, rows, columns=("text", "label", "client_id")):
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(clients=3, per_client=12):
    return [{"text": f"message {c} {i}", "label": ["x", "y"][i % 2], "client_id": f"c{c}"}
            for c in range(clients) for i in range(per_client)]


def test_synthetic_data_is_deterministic_and_heterogeneous():
    assert generate(4, seed=1) == generate(4, seed=1)
    assert generate(4, seed=1) != generate(4, seed=2)
    rows = generate(4, seed=1)
    mixes = {}
    for row in rows:
        mixes.setdefault(row["client_id"], {}).setdefault(row["label"], 0)
        mixes[row["client_id"]][row["label"]] += 1
    shares = [max(m.values()) / sum(m.values()) for m in mixes.values()]
    assert max(shares) > 0.4  # label skew, not a uniform 0.25 everywhere


def test_same_word_has_client_specific_labels():
    rows = generate(8, seed=0)
    labels_of_python = {r["label"] for r in rows if " python " in f" {r['text']} "}
    assert labels_of_python == {"tech", "animals"}


@pytest.mark.parametrize("partitioner", ["natural", "iid", "dirichlet"])
def test_partitions_are_deterministic_for_a_seed(partitioner):
    spec = DataSpec(partitioner=partitioner, num_clients=4, seed=3)
    first = [client_data(spec, p) for p in range(num_partitions(spec))]
    client_data.cache_clear()
    load_rows.cache_clear()
    second = [client_data(spec, p) for p in range(num_partitions(spec))]
    assert first == second
    assert sum(len(c.train) + len(c.val) + len(c.test) for c in first) == len(load_rows(spec)[0])


def test_another_seed_gives_other_partitions():
    a = client_data(DataSpec(partitioner="iid", num_clients=4, seed=1), 0)
    b = client_data(DataSpec(partitioner="iid", num_clients=4, seed=2), 0)
    assert a.train.texts != b.train.texts


def test_every_client_splits_its_own_data(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _rows())
    spec = DataSpec(source=str(path))
    client = client_data(spec, 1)
    assert client.client == "c1"
    assert (len(client.train), len(client.val), len(client.test)) == (7, 2, 3)
    assert all(t.startswith("message 1 ") for t in client.train.texts + client.test.texts)


def test_jsonl_is_read_like_csv(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    assert num_partitions(DataSpec(source=str(path))) == 3
    assert client_data(DataSpec(source=str(path)), 0).client == "c0"


def test_missing_column_is_named(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _rows(), columns=("text", "client_id"))
    with pytest.raises(DataError, match="'label'"):
        load_rows(DataSpec(source=str(path)))


def test_client_with_too_few_examples_is_named(tmp_path):
    rows = _rows() + [{"text": "lonely", "label": "x", "client_id": "tiny"}]
    path = _write_csv(tmp_path / "d.csv", rows)
    spec = DataSpec(source=str(path))
    with pytest.raises(DataError, match="'tiny' has 1 examples"):
        [client_data(spec, p) for p in range(num_partitions(spec))]


def test_empty_partition_is_named(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _rows(clients=1, per_client=6))
    spec = DataSpec(source=str(path), partitioner="iid", num_clients=6)
    with pytest.raises(DataError, match="has 1 examples"):
        client_data(spec, 0)


def test_unknown_label_is_named(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _rows())
    with pytest.raises(DataError, match=r"unknown label\(s\) \['y'\]"):
        load_rows(DataSpec(source=str(path), labels=("x", "z")))


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="cannot read"):
        read_rows(path)
    with pytest.raises(DataError, match="cannot read"):
        read_rows(tmp_path / "absent.csv")


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{not json}\n')
    with pytest.raises(DataError, match="line 2"):
        read_rows(path)


def test_unsupported_file_type_is_named(tmp_path):
    with pytest.raises(DataError, match="'.parquet'"):
        read_rows(tmp_path / "d.parquet")


def test_natural_partitioning_needs_client_ids(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _rows(), columns=("text", "label"))
    with pytest.raises(DataError, match="client_id"):
        client_data(DataSpec(source=str(path)), 0)


def test_a_csv_field_over_the_csv_limit_is_named_not_a_csv_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nshort,x\n" + "a" * 200_000 + ",y\n")
    with pytest.raises(DataError, match=r"line \d+ is not usable CSV .*field larger than field limit"):
        read_rows(path)


@pytest.mark.parametrize("line,named", [
    ("[" * 100_000 + "]" * 100_000, "nests"),            # RecursionError in json.loads before
    ('{"text": "a", "label": NaN}', "not valid JSON"),  # NaN is not JSON
    ('["text", "label"]', "must be a JSON object"),
])
def test_jsonl_rows_go_through_the_guarded_reader(tmp_path, line, named):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n' + line + "\n")
    with pytest.raises(DataError, match=f"line 2 is not a usable JSON object: .*{named}"):
        read_rows(path)
