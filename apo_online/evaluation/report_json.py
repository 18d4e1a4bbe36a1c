"""Result files of the eval scripts as strict JSON: a missing or undefined value (NaN, an infinity) is written as
null, which every JSON parser reads (Python's own `NaN` token is not JSON). Shared by every script under eval/, so it
lives in the package they all import."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def strict(value: Any) -> Any:
    """value with every non-finite float replaced by None (through dicts, lists and tuples)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(path: str | Path, value: Any) -> None:
    Path(path).write_text(json.dumps(strict(value), indent=1, allow_nan=False), encoding="utf-8")
