"""The once-per-run install message: the adapter template, and the quantized base for a
node that lacks it, or for a device node the signed training export (`query.install`),
as Flower records and back. A receiving node checks the export's names here and its
signature and hashes before use (device/export_cache.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.package import BasePackage
from fedpeft.core.errors import IntegrityError
from fedpeft.core.trust.json_reader import parse_json_object

from .records import from_record, to_record

EXPORT_MAX_FILES = 64  # a training export holds about 10 (graphs, tokenizer files, export.json/.sig)
_EXPORT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}){0,3}")


def install_content(template: AdapterTemplate, package: BasePackage | None, export: Path | None = None) -> RecordDict:
    """What a node needs once per run: the adapter template, and the base unless cached
    (a device node: the run's signed training export folder instead)."""
    content = RecordDict({
        "template": to_record(template.init),
        "template-meta": ConfigRecord({"description": json.dumps(template.description())}),
    })
    if package is not None:
        files = {f"file:{name}": data for name, data in package.files.items()}
        content["base"] = to_record(package.tensors)
        content["base-meta"] = ConfigRecord({"manifest": json.dumps(package.manifest), **files})
    if export is not None:
        content["export"] = ConfigRecord({f"file:{path.relative_to(export).as_posix()}": path.read_bytes()
                                          for path in sorted(export.rglob("*")) if path.is_file()})
    return content


def export_from_content(content: RecordDict) -> dict[str, bytes]:
    """The training export's files an install message carries (relative name -> bytes), their
    names checked: relative, plain, at most EXPORT_MAX_FILES (what they hold is checked
    against export.json's signature by the node before anything is stored)."""
    meta = content.config_records.get("export")
    if meta is None:
        raise IntegrityError("the install message carries no training export for this device node")
    if len(meta) > EXPORT_MAX_FILES:
        raise IntegrityError(f"the install message's export has {len(meta)} entries, more than {EXPORT_MAX_FILES}")
    files = {}
    for key, value in meta.items():
        name = key[len("file:"):] if key.startswith("file:") else ""
        if not _EXPORT_NAME.fullmatch(name) or not isinstance(value, bytes):  # no "..", "/x" or "~"
            raise IntegrityError(f"the install message's export holds an entry {key[:80]!r} that is not a plain file")
        files[name] = value
    return files


def package_from_content(content: RecordDict) -> BasePackage:
    meta = content.config_records["base-meta"]
    files = {k[len("file:"):]: bytes(v) for k, v in meta.items() if k.startswith("file:")}
    manifest = parse_json_object(str(meta["manifest"]), "the install message's base manifest",
                                 allow_nonfinite=True)  # a model config may hold Infinity; verified by base_id
    return BasePackage(manifest, files, from_record(content.array_records["base"]))


def template_from_content(content: RecordDict) -> AdapterTemplate:
    description = parse_json_object(str(content.config_records["template-meta"]["description"]),
                                    "the install message's template description")
    return AdapterTemplate.from_description(description, from_record(content.array_records["template"]))
