"""The benchmark's figures as a markdown table (for people) and a JSON file (for scripts).

Figures are one flat dict; keys end in their unit (`_s`, `_per_s`, `_bytes`) except ratios
and counts. `ROWS` says which figures the table shows, how they are labelled and formatted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 100 else f"{value:.0f} s"


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def _flops(value: float) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}FLOP"
    return f"{value:.0f} FLOP"


def _bytes(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


# (key, label, format). Keys missing from the figures (e.g. no memory statistics on this
# backend, decoding skipped) are left out of the table.
ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("config", "config", str),
    ("devices", "devices", str),
    ("batch_shape", "batch (rows x tokens per row)", str),
    ("fill_rate", "fill rate (non-padding share of target tokens)", lambda v: f"{v:.2f}"),
    ("step_time_s", "train step time, median", _seconds),
    ("step_time_min_s", "train step time, min", _seconds),
    ("step_time_max_s", "train step time, max", _seconds),
    ("step_cpu_s", "train step CPU time of this process, median", _seconds),
    ("tokens_per_s", "target tokens/s (with padding)", _rate),
    ("nonpad_tokens_per_s", "target tokens/s (non-padding)", _rate),
    ("compile_s", "compile time (trace + lower + XLA compile)", _seconds),
    ("model_flops_per_step", "model FLOPs per train step", _flops),
    ("achieved_flops_per_s", "achieved model FLOP/s", lambda v: _flops(v) + "/s"),
    ("peak_flops", "peak FLOP/s", lambda v: _flops(v) + "/s"),
    ("peak_source", "peak from", str),
    ("mfu", "MFU (model FLOPs utilisation)", lambda v: f"{100 * v:.1f}%"),
    ("memory_peak_bytes", "device memory peak (first device)", _bytes),
    ("decode_greedy_tokens_per_s", "greedy decode tokens/s", _rate),
    ("decode_greedy_sentences_per_s", "greedy decode sentences/s", lambda v: f"{v:,.1f}/s"),
    ("decode_beam4_tokens_per_s", "beam-4 decode tokens/s", _rate),
    ("decode_beam4_sentences_per_s", "beam-4 decode sentences/s", lambda v: f"{v:,.1f}/s"),
)


def markdown_table(figures: Mapping[str, Any]) -> str:
    """A two-column markdown table of the figures listed in ROWS that are present."""
    lines = ["| figure | value |", "|---|---|"]
    for key, label, fmt in ROWS:
        if figures.get(key) is not None:
            lines.append(f"| {label} | {fmt(figures[key])} |")
    return "\n".join(lines)


def write_json(path: str | Path, figures: Mapping[str, Any]) -> None:
    """All figures (not only the table's) as one JSON object."""
    Path(path).write_text(json.dumps(dict(figures), indent=2, sort_keys=True) + "\n")
