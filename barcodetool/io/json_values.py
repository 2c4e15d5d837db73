"""Values made ready for JSON: what barcodetool writes as JSON (results, calibration details) holds numpy scalars
and non-finite floats, which the json module would refuse or write as invalid JSON (NaN, Infinity)."""

from __future__ import annotations

import math
from typing import Any


def json_values(value: Any, *, nan: str | None = None) -> Any:
    """`value` with its dicts (keys as strings), lists and tuples walked, numpy scalars made Python numbers, and
    non-finite floats written as "inf" and "-inf", NaN as `nan` (None: JSON null)."""
    if isinstance(value, dict):
        return {str(k): json_values(v, nan=nan) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_values(v, nan=nan) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return nan if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
