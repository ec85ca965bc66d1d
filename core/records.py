"""Conversions between fedpeft objects and Flower records (what travels in a Message)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from .base_package import BasePackage
from .templates import AdapterTemplate


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def record_bytes(record: ArrayRecord) -> int:
    return sum(len(a.data) for a in record.values())


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
    return BasePackage(json.loads(str(meta["manifest"])), files, from_record(content.array_records["base"]))


def template_from_content(content: RecordDict) -> AdapterTemplate:
    description = json.loads(str(content.config_records["template-meta"]["description"]))
    return AdapterTemplate.from_description(description, from_record(content.array_records["template"]))
