"""Checks a run's config before anything expensive starts, and derives the model's config.

Every config file starts from `configs/base.py`, which declares (and comments) every field,
so a key that base.py does not have is a typo or a leftover: it is an error, not a silent
no-op. Values that would only fail later (at the first evaluation, inside jit, or as NaN
positions) are errors here too: lengths beyond model.max_length, bad decode settings, and
attention implementations the platform or dtype cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from configs import base
from decoding.settings import DecodeSettings, DecodeSettingsError
from model import TransformerConfig
from model.config import resolve_attention_implementation
from training.errors import ConfigError
from training.state import SCHEDULES


def _is_section(value: Any) -> bool:
    return isinstance(value, Mapping | ml_collections.ConfigDict)


def unknown_keys(
    config: Mapping[str, Any], reference: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted names of keys in `config` that `reference` does not have (recursively)."""
    found = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key not in reference:
            found.append(name)
        elif _is_section(value) and _is_section(reference[key]):
            found += unknown_keys(value, reference[key], prefix=f"{name}.")
    return found


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first problem: unknown keys, then bad values."""
    unknown = unknown_keys(config, base.get_config())
    if unknown:
        raise ConfigError(
            f"Unknown config key(s) {unknown}: every field must be declared (with a comment) in "
            "configs/base.py. Check the spelling in your config file or --config.* flags."
        )
    problems = {
        "batch_size must be positive": config.batch_size > 0,
        "num_train_steps must be positive": config.num_train_steps > 0,
        "grad_accum_steps must be at least 1": config.grad_accum_steps >= 1,
        f"schedule must be one of {SCHEDULES}": config.schedule in SCHEDULES,
        "warmup_steps must be >= 0": config.warmup_steps >= 0,
        "learning_rate must be positive": config.learning_rate > 0,
        "label_smoothing must be in [0, 1)": 0 <= config.label_smoothing < 1,
        "grad_clip_norm must be >= 0 (0 = off)": config.grad_clip_norm >= 0,
        "weight_decay must be >= 0": config.weight_decay >= 0,
        "log_every_steps must be positive": config.log_every_steps > 0,
        "checkpoint_every_steps must be positive": config.checkpoint_every_steps > 0,
        "eval_every_steps must be >= 0 (0 = only at the end)": config.eval_every_steps >= 0,
        "keep_checkpoints must be positive": config.keep_checkpoints > 0,
        "eval_batch_size must be positive": config.eval_batch_size > 0,
        "max_steps_in_flight must be >= 0 (0 = no bound)": config.max_steps_in_flight >= 0,
        "model.dtype must be 'auto', 'float32' or 'bfloat16'": config.model.dtype
        in ("auto", "float32", "bfloat16"),
    }
    for message, ok in problems.items():
        if not ok:
            raise ConfigError(f"Bad config: {message}.")
    check_lengths(config)
    check_decode(config.decode)
    check_attention(config)
    model_config(config)  # the model's own checks (TransformerConfig)


def check_lengths(config: ml_collections.ConfigDict) -> None:
    """Training rows, evaluation rows and decoding inputs fit the model's positions."""
    limit = config.model.max_length
    for name in ("max_length", "max_eval_length", "max_predict_length"):
        length = config.data[name]
        if not 2 <= length <= limit:
            raise ConfigError(
                f"Bad config: data.{name}={length} must be between 2 and model.max_length="
                f"{limit} (the longest position the model embeds); lower it or raise "
                "model.max_length."
            )


def check_decode(decode: ml_collections.ConfigDict) -> None:
    """config.decode makes valid DecodeSettings (the evaluation's decoding uses them)."""
    try:
        DecodeSettings.from_config(decode)
    except DecodeSettingsError as error:
        raise ConfigError(f"{error} Change config.decode (--config.decode.FIELD=VALUE).") from None


def check_attention(config: ml_collections.ConfigDict, platform: str | None = None) -> None:
    """'cudnn' attention runs only on NVIDIA GPUs, in bfloat16, without attention dropout;
    elsewhere it would fail inside jit or fall back silently."""
    model = config.model
    if model.attention_implementation != "cudnn":
        return
    platform = platform or jax.default_backend()
    dtype = compute_dtype(model.dtype, platform)
    needs = {
        f"a GPU (this run's platform is {platform})": platform == "gpu",
        f"model.dtype 'bfloat16' or 'auto' (it computes in {dtype})": dtype == "bfloat16",
        f"model.attention_dropout_rate=0 (it is {model.attention_dropout_rate})": (
            model.attention_dropout_rate == 0
        ),
    }
    for need, ok in needs.items():
        if not ok:
            raise ConfigError(
                f"Bad config: model.attention_implementation='cudnn' needs {need}; set "
                "model.attention_implementation='xla', or change that setting."
            )


def compute_dtype(requested: str, platform: str | None = None) -> str:
    """'auto' -> bfloat16 on GPU/TPU, float32 on CPU; explicit dtypes pass through."""
    if requested != "auto":
        return requested
    platform = platform or jax.default_backend()
    return "float32" if platform == "cpu" else "bfloat16"


def model_config(
    config: ml_collections.ConfigDict, platform: str | None = None
) -> TransformerConfig:
    """config.model as a TransformerConfig (unknown model keys are rejected there), with the
    compute dtype resolved for the platform."""
    fields = dict(config.model)
    fields["dtype"] = compute_dtype(fields["dtype"], platform)
    try:
        fields["attention_implementation"] = resolve_attention_implementation(fields, platform)
        return TransformerConfig.from_mapping(fields)
    except ValueError as error:
        raise ConfigError(str(error)) from None
