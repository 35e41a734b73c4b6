"""Parameter counts by module, from shapes only (nothing is allocated)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import linen as nn
from flax import traverse_util

from model.config import TransformerConfig
from model.parameters import abstract_params
from model.transformer import Transformer


def parameter_shapes(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter tree of `Transformer` as ShapeDtypeStructs (no memory is used)."""
    fields = dict(model_config)
    if fields.get("dtype") == "auto":  # resolved per platform by training; counts ignore it
        fields["dtype"] = "float32"
    return nn.unbox(abstract_params(Transformer(TransformerConfig.from_mapping(fields))))


def count_parameters(model_config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """[(module path, parameter count)] grouped by the first two path levels."""
    flat = traverse_util.flatten_dict(parameter_shapes(model_config))
    totals: dict[str, int] = defaultdict(int)
    for path, leaf in flat.items():
        totals["/".join(path[:2]) if len(path) > 2 else path[0]] += int(np.prod(leaf.shape))
    return sorted(totals.items())


def format_parameter_table(rows: list[tuple[str, int]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"{'module'.ljust(width)}  {'parameters':>12}", "-" * (width + 14)]
    lines += [f"{name.ljust(width)}  {count:>12,}" for name, count in rows]
    total = sum(count for _, count in rows)
    lines += ["-" * (width + 14), f"{'total'.ljust(width)}  {total:>12,}  ({total / 1e6:.1f}M)"]
    return "\n".join(lines)
