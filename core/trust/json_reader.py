"""The one way fedpeft parses JSON that someone else wrote: a manifest or signature, a
registry's answer, a device's state files, a keyring, a checkpoint's metadata, a user's
data rows, a job's config text.

The standard library's parser recurses once per nesting level (deep input raises
RecursionError, which nobody catches), reads any size, and accepts NaN and Infinity,
which are not JSON. Here the size is bounded before parsing, the depth after it (an
iterative walk: no recursion on attacker-chosen depth), non-finite constants are refused
unless asked for, and every failure is a JSONRefused whose `reason` names the check.
No maintained library bounds depth and size together, hence this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpeft.core.errors import IntegrityError

from .files import SMALL_FILE_BYTES, UnreadableFile, read_small

MAX_DEPTH = 32  # our deepest document (a release manifest) nests 4 levels


class JSONRefused(IntegrityError):
    """JSON that must not be used; `reason` is too-large, too-deep, malformed or unreadable."""

    def __init__(self, reason: str, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.reason, self.what, self.detail = reason, what, detail


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def depth_of(value: Any) -> int:
    """How many containers nest in a parsed document (a scalar: 0, `[]`: 1), walked
    without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(data: bytes | str, what: str, limit: int = SMALL_FILE_BYTES, max_depth: int = MAX_DEPTH,
               allow_nonfinite: bool = False) -> Any:
    """The document in `data` (named `what` in errors) if it is at most `limit` bytes,
    valid JSON, and nests at most `max_depth` levels."""
    if len(data) > limit:
        raise JSONRefused("too-large", what, f"{len(data)} bytes of JSON, more than the {limit} allowed")
    try:
        value = json.loads(data, parse_constant=None if allow_nonfinite else _refuse_constant)
    except RecursionError:
        raise JSONRefused("too-deep", what, "nests deeper than the parser can follow") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise JSONRefused("malformed", what, f"not valid JSON ({exc})") from None
    if depth_of(value) > max_depth:
        raise JSONRefused("too-deep", what, f"nests more than {max_depth} levels")
    return value


def parse_json_object(data: bytes | str, what: str, **bounds: Any) -> dict[str, Any]:
    """parse_json, and the document must be an object."""
    value = parse_json(data, what, **bounds)
    if not isinstance(value, dict):
        raise JSONRefused("malformed", what, f"must be a JSON object, not {type(value).__name__}")
    return value


def read_json(path: Path, limit: int = SMALL_FILE_BYTES, max_depth: int = MAX_DEPTH,
              allow_nonfinite: bool = False) -> dict[str, Any]:
    """The JSON object in the regular file `path` (core/trust/files.py's checks first)."""
    try:
        data = read_small(path, limit)
    except UnreadableFile as exc:
        raise JSONRefused("unreadable", str(path), str(exc)) from exc
    return parse_json_object(data, str(path), limit=limit, max_depth=max_depth, allow_nonfinite=allow_nonfinite)
