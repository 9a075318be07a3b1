"""On-disk cache of per-module cost counts, keyed by architecture, resolution and batch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pruner.io import cache_dir, write_json

__all__ = ["cache_key", "read_cached", "write_cached"]

_VERSION = 1  # bump when the way counts are taken changes


def cache_key(config: Mapping[str, Any], **shape: Any) -> str:
    arch = {k: v for k, v in config.items() if not k.startswith("_")}
    blob = json.dumps({"arch": arch, "shape": shape, "version": _VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_cached(kind: str, key: str) -> dict[str, Any] | None:
    path = cache_dir() / kind / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_cached(kind: str, key: str, payload: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    write_json(cache_dir() / kind / f"{key}.json", dict(payload), indent=None)
