"""A device node's cost per message: the real ClientApp handlers, one fresh process each.

A deployed SuperNode runs each message in a fresh `flwr-clientapp` process, so a device
node pays, per message: Python and its imports, verifying the training export (signature,
every file's SHA-256) and opening its ONNX Runtime sessions, reading its rows, the work,
and signing. This bench builds what a MiniLM device node holds after `query.install`
(the default config's template, the run's training export, verified into the node's
export cache; the first default client's rows as its data file), then for each message
kind starts a process in which torch, transformers and peft cannot be imported
(tests/torch_blocker) and calls client/client_app.py's handler with the message a server
sends. Each child reports its phases and its peak resident memory (VmHWM).

    .venv/bin/python bench/device_node.py [--work runs/bench-device-node] [--repeats 3]

Non-training time = the child's wall time minus the handler's training or scoring pass.
Targets (issue 28): under 2 s, and under 500 MB peak while training MiniLM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fedpeft.core.trust.json_reader import parse_json_object

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("status", "train", "evaluate", "class_means", "personalize")


def prepare(work: Path) -> dict:
    """The node's state after install, and the job and global adapter a round sends."""
    from fedpeft.core.adapters.template import create_template
    from fedpeft.core.base.cache import NodeCache
    from fedpeft.core.base.model import load_base
    from fedpeft.core.base.package import BasePackage
    from fedpeft.core.base.tasks import get_task
    from fedpeft.core.config import load_config
    from fedpeft.core.training.data import client_data, load_rows
    from fedpeft.core.training.job import Job
    from fedpeft.core.trust.keys import load_private_key, load_public_key, new_key_pair, public_key_path
    from fedpeft.core.wire.install import export_from_content, install_content
    from fedpeft.device.export_cache import ExportCache
    from fedpeft.export.exporter import export_training

    config = load_config(None)
    labels = load_rows(config.data_spec())[1]
    spec = config.data_spec(labels)
    package = BasePackage.from_pretrained(config.model.folder(), get_task(config.model.task), config.model.quantization)
    base = load_base(package, num_labels=len(labels))
    template = create_template(base.model, base.task, config.template_spec(), list(labels))
    operator = work / "operator.key"
    if not operator.exists():
        new_key_pair(operator)
    operator_key = load_private_key(operator)
    export = work / "server-export"
    if not (export / "export.json").is_file():
        print("exporting the MiniLM training export ...", flush=True)
        export_training(package, template, export, operator_key, client_data(spec, 0).train, config.train.max_length)
    cache = NodeCache(work / "node" / "cache")
    cache.put_template(template, template.template_id)
    ExportCache(cache.root).put(export_from_content(install_content(template, None, export)), package.base_id,
                                template.template_id, load_public_key(public_key_path(operator)))
    data = client_data(spec, 0)
    rows = work / "node" / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": t, "label": labels[y], "split": split}) + "\n"
                            for split, part in (("train", data.train), ("val", data.val), ("test", data.test))
                            for t, y in zip(part.texts, part.labels)))
    signing = work / "node" / "client.key"  # what the node signs its deltas with
    if not signing.exists():
        new_key_pair(signing)
    job = Job(package.base_id, template.template_id, spec, config.train_settings(), config.personalization.epochs,
              config.personalization.local_only_epochs, run_id="bench")
    sizes = {p.name: p.stat().st_size for p in export.rglob("*.onnx")}
    return {"job": job, "template": template, "node_config": {
        "kind": "device", "cache-dir": str(cache.root), "key-file": str(signing),
        "operator-key": str(public_key_path(operator)), "data-file": str(rows), "data-name": data.client,
        "partition-id": 0}, "rows": {k: len(v) for k, v in (("train", data.train), ("val", data.val),
                                                             ("test", data.test))}, "export_bytes": sizes}


def child(kind: str, work: Path) -> None:
    """One message in this (fresh, torch-blocked) process: phases and peak memory as JSON."""
    started = time.perf_counter()
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedpeft.client import client_app
    from fedpeft.core.training.job import Job
    from fedpeft.core.wire.records import to_record

    imported = time.perf_counter()
    spec = parse_json_object((work / "message.json").read_text(), "message.json")
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    job_config = Job.from_config(ConfigRecord(spec["job"])).to_config()
    from safetensors.numpy import load_file

    arrays = load_file(str(work / "global.safetensors"))
    config = ConfigRecord({**job_config, "server-round": 1}) if kind != "status" else \
        ConfigRecord({"base-id": spec["job"]["base-id"], "template-id": spec["job"]["template-id"]})
    content = RecordDict({"config": config, **({"arrays": to_record(arrays)} if kind != "status" else {})})
    context = Context(run_id=1, node_id=1, node_config=spec["node_config"], state=RecordDict(), run_config={})
    msg = Message(content, dst_node_id=1, message_type="train" if kind == "train" else f"query.{kind}")
    # the handler's own work, timed from inside: the learner's pass (train, score) is the part
    # that is not overhead
    from fedpeft.device.trainer import DeviceTrainer

    passes = {"seconds": 0.0}
    for name in ("train", "evaluate", "class_sums"):
        original = getattr(DeviceTrainer, name)

        def timed(self, *args, _original=original, **kwargs):
            begin = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                passes["seconds"] += time.perf_counter() - begin
        setattr(DeviceTrainer, name, timed)
    handler = {"status": client_app.status, "train": client_app.train, "evaluate": client_app.evaluate,
               "class_means": client_app.class_means, "personalize": client_app.personalize}[kind]
    reply = handler(msg, context)
    done = time.perf_counter()
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"import_s": imported - started, "handler_s": done - imported, "work_s": passes["seconds"],
                      "peak_mb": peak_kb / 1024, "reply_records": sorted(reply.content.keys()),
                      "torch": "torch" in sys.modules}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-device-node"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work.resolve()
    if args.child:
        child(args.child, work)
        return
    work.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file

    state = prepare(work)
    save_file(state["template"].init, str(work / "global.safetensors"))
    config = dict(state["job"].to_config())
    (work / "message.json").write_text(json.dumps({"job": config, "node_config": state["node_config"]}))
    env = {**os.environ, "FEDPEFT_TEST_BLOCK_TORCH": "all", "PYTHONPATH": str(ROOT / "tests" / "torch_blocker")}
    print(f"device node: MiniLM training export {state['export_bytes']}, rows {state['rows']}")
    print("| message | process wall s | imports s | training / scoring s | non-training s | peak MB |")
    print("|---|---|---|---|---|---|")
    results = {}
    for kind in KINDS:
        runs = []
        for _ in range(args.repeats):
            begin = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work)],
                                  capture_output=True, text=True, env=env)
            wall = time.perf_counter() - begin
            if proc.returncode != 0:
                raise SystemExit(f"{kind} failed: {proc.stderr[-3000:]}")
            report = parse_json_object(proc.stdout.strip().splitlines()[-1], f"the {kind} child's report")
            assert not report["torch"]
            runs.append({**report, "wall_s": wall})
        median = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "import_s", "work_s", "peak_mb")}
        median["overhead_s"] = statistics.median(r["wall_s"] - r["work_s"] for r in runs)
        results[kind] = median
        print(f"| {kind} | {median['wall_s']:.2f} | {median['import_s']:.2f} | {median['work_s']:.2f} | "
              f"{median['overhead_s']:.2f} | {median['peak_mb']:.0f} |", flush=True)
    (work / "device_node.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
