"""Label-smoothed cross entropy and the token-level metrics reported with it.

Functions return *sums* over the tokens of a batch (plus the token count) so that batches,
devices and hosts combine exactly by adding; `summarize` turns sums into means at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def loss_sums(
    logits: Array,  # [batch, length, vocab] float32
    targets: Array,  # [batch, length] int, 0 = padding
    label_smoothing: float,
) -> dict[str, Array]:
    """Token sums of the label-smoothed loss, the plain negative log-likelihood and correct
    argmax predictions, over non-padding target tokens (in packed rows every segment's tokens
    are non-zero and padding is 0, so weighting by `targets > 0` covers both).

    Smoothing (Szegedy et al. 2016, as in the paper): the reference distribution puts
    1 - label_smoothing on the target and spreads label_smoothing evenly over the other
    vocab - 1 tokens. The loss is the cross entropy against that distribution.
    """
    vocab = logits.shape[-1]
    logits = logits.astype(jnp.float32)
    off_target = label_smoothing / (vocab - 1)
    # With log p = z - logsumexp(z) and the weights summing to 1, the smoothed cross entropy
    # -(1 - ls) log p(target) - ls/(V-1) * sum_{k != target} log p(k) equals
    # logsumexp(z) - (1 - ls - ls/(V-1)) z_target - ls/(V-1) * sum_k z_k. Written so, no
    # [batch, length, vocab] log-probabilities are materialized and the gradient is one fused
    # softmax(z) - weights pass (measured in docs/performance.md).
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_normalizer - target_logits  # [batch, length]
    smoothed = (
        log_normalizer
        - (1.0 - label_smoothing - off_target) * target_logits
        - off_target * jnp.sum(logits, axis=-1)
    )
    weights = (targets > 0).astype(jnp.float32)
    # The target is the argmax iff its logit is the largest (ties, measure zero, count as
    # correct); a max is much cheaper than an argmax over the vocabulary on CPU.
    correct = (target_logits >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(smoothed * weights),
        "nll_sum": jnp.sum(nll * weights),
        "correct": jnp.sum(correct * weights),
        "tokens": jnp.sum(weights),
    }


def summarize(sums: Mapping[str, float | np.ndarray]) -> dict[str, float]:
    """Sums -> per-token means: loss (label-smoothed), nll, perplexity, accuracy, and the
    number of non-padding tokens. Other entries (e.g. `grad_norm_sum`) are averaged over
    `steps` if present."""
    tokens = float(sums["tokens"])
    denominator = max(tokens, 1.0)
    nll = float(sums["nll_sum"]) / denominator
    summary = {
        "loss": float(sums["loss_sum"]) / denominator,
        "nll": nll,
        "perplexity": math.exp(nll) if not nll > 700 else math.inf,  # NaN stays NaN
        "accuracy": float(sums["correct"]) / denominator,
        "tokens": tokens,
    }
    steps = float(sums.get("steps", 1.0))
    for key, value in sums.items():
        if key.endswith("_sum") and key not in ("loss_sum", "nll_sum"):
            summary[key.removesuffix("_sum")] = float(value) / max(steps, 1.0)
    return summary
