"""The once-per-run install message: the adapter template, and the quantized base for a
node that lacks it (`query.install`), as Flower records and back."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, RecordDict

from fedpeft.core.adapters.template import AdapterTemplate
from fedpeft.core.base.package import BasePackage
from fedpeft.core.trust.json_reader import parse_json_object

from .records import from_record, to_record


def install_content(template: AdapterTemplate, package: BasePackage | None) -> RecordDict:
    """What a node needs once per run: the adapter template, and the base unless cached."""
    content = RecordDict({
        "template": to_record(template.init),
        "template-meta": ConfigRecord({"description": json.dumps(template.description())}),
    })
    if package is not None:
        files = {f"file:{name}": data for name, data in package.files.items()}
        content["base"] = to_record(package.tensors)
        content["base-meta"] = ConfigRecord({"manifest": json.dumps(package.manifest), **files})
    return content


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
