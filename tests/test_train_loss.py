"""Training's pure parts against independent references: the label-smoothed loss against a
float64 numpy formula, the learning-rate schedule against the paper's formula, the config checks,
the mesh-shape arithmetic and the logged gradient norm."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from training import configuration, partitioning
from training.errors import ConfigError
from training.loss import loss_sums, summarize
from training.state import learning_rate_schedule
from training.steps import gradient_norm


def numpy_smoothed_loss(logits, targets, smoothing):
    """Cross entropy against q = (1 - smoothing) on the target and smoothing / (V - 1) on every
    other token, per token, in float64; plus nll and argmax-correctness."""
    logits = np.asarray(logits, np.float64)
    vocab = logits.shape[-1]
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    q = np.full(logits.shape, smoothing / (vocab - 1))
    np.put_along_axis(q, targets[..., None], 1.0 - smoothing, axis=-1)
    smoothed = -(q * log_probs).sum(-1)
    nll = -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    correct = logits.argmax(-1) == targets
    return smoothed, nll, correct


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_matches_float64_reference(smoothing):
    rng = np.random.default_rng(0)
    batch, length, vocab = 4, 7, 11
    logits = rng.standard_normal((batch, length, vocab)).astype(np.float32) * 3
    targets = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    targets[0, 4:] = 0  # padding at the end of a row
    targets[2, :] = 0  # an all-padding row
    sums = {k: float(v) for k, v in loss_sums(jnp.asarray(logits), targets, smoothing).items()}

    smoothed, nll, correct = numpy_smoothed_loss(logits, targets, smoothing)
    weights = targets > 0
    assert sums["tokens"] == weights.sum()
    np.testing.assert_allclose(sums["loss_sum"], (smoothed * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums["nll_sum"], (nll * weights).sum(), rtol=1e-5)
    assert sums["correct"] == (correct & weights).sum()

    summary = summarize(sums)
    tokens = weights.sum()
    np.testing.assert_allclose(summary["loss"], (smoothed * weights).sum() / tokens, rtol=1e-5)
    np.testing.assert_allclose(
        summary["perplexity"], math.exp((nll * weights).sum() / tokens), rtol=1e-4
    )
    np.testing.assert_allclose(summary["accuracy"], (correct & weights).sum() / tokens)


def test_padding_tokens_do_not_change_the_loss():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 5, 9)).astype(np.float32)
    targets = np.array([[3, 4, 1, 0, 0]], np.int32)
    other_logits = logits.copy()
    other_logits[0, 3:] = rng.standard_normal((2, 9)) * 100  # garbage where targets are padding
    a = loss_sums(jnp.asarray(logits), targets, 0.1)
    b = loss_sums(jnp.asarray(other_logits), targets, 0.1)
    assert {k: float(v) for k, v in a.items()} == {k: float(v) for k, v in b.items()}


def paper_rate(step, d_model, warmup):
    """Vaswani et al. (2017), eq. 3: d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def test_rsqrt_schedule_is_the_papers_formula():
    config = default.get_config()
    config.schedule = "rsqrt"
    config.model.d_model = 512
    config.warmup_steps = 4000
    config.learning_rate = 1.0
    schedule = learning_rate_schedule(config)
    for step in [1, 2, 100, 3999, 4000, 4001, 10_000, 100_000]:  # update n uses count n - 1
        np.testing.assert_allclose(
            float(schedule(step - 1)), paper_rate(step, 512, 4000), rtol=1e-5
        )
    # The peak is at the end of warm-up: about 7.0e-4 for the base model.
    np.testing.assert_allclose(float(schedule(3999)), 4000**-0.5 * 512**-0.5, rtol=1e-5)
    config.learning_rate = 2.0  # a multiplier
    np.testing.assert_allclose(
        float(learning_rate_schedule(config)(99)), 2 * paper_rate(100, 512, 4000), rtol=1e-5
    )


def test_cosine_and_constant_schedules_warm_up_to_the_learning_rate():
    config = default.get_config()
    config.learning_rate = 1e-3
    config.warmup_steps = 10
    config.num_train_steps = 110
    config.schedule = "cosine"
    cosine = learning_rate_schedule(config)
    assert float(cosine(0)) == 0.0
    np.testing.assert_allclose(float(cosine(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(cosine(110)), 0.0, atol=1e-9)
    config.schedule = "constant"
    constant = learning_rate_schedule(config)
    np.testing.assert_allclose(float(constant(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(constant(1000)), 1e-3, rtol=1e-6)


def test_unknown_config_keys_are_errors():
    config = default.get_config()
    configuration.check_config(config)  # the shipped config is valid
    with config.unlocked():
        config.lerning_rate = 0.1
        config.model.dropout = 0.3
    with pytest.raises(ConfigError, match=r"lerning_rate.*model\.dropout"):
        configuration.check_config(config)


def test_bad_config_values_are_errors():
    config = default.get_config()
    config.schedule = "linear-ish"
    with pytest.raises(ConfigError, match="schedule must be one of"):
        configuration.check_config(config)
    config = default.get_config()
    config.model.dtype = "float16"
    with pytest.raises(ConfigError, match="model.dtype"):
        configuration.check_config(config)


def test_auto_dtype_is_bfloat16_on_accelerators_only():
    assert configuration.compute_dtype("auto", "cpu") == "float32"
    assert configuration.compute_dtype("auto", "gpu") == "bfloat16"
    assert configuration.compute_dtype("auto", "tpu") == "bfloat16"
    assert configuration.compute_dtype("float32", "tpu") == "float32"


def test_mesh_shape_minus_one_takes_the_rest():
    assert partitioning.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
    assert partitioning.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    assert partitioning.resolve_mesh_shape((1, 4, 2), 8) == (1, 4, 2)
    for bad in [(3, -1, 1), (-1, -1, 1), (2, 2, 1), (8, 1)]:
        with pytest.raises(ConfigError):
            partitioning.resolve_mesh_shape(bad, 8)


def test_gradient_norm_is_the_global_l2_norm():
    """The train step's logged gradient norm (computed through an optimization barrier on CPU)
    against float64 NumPy, on a pytree of mixed shapes."""
    rng = np.random.default_rng(3)
    grads = {
        "kernel": rng.normal(size=(64, 3, 8)).astype(np.float32),
        "bias": rng.normal(size=(17,)).astype(np.float32) * 1e-3,
        "layers": [rng.normal(size=(5, 5)).astype(np.float32) * 10.0],
    }
    expected = math.sqrt(
        sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in jax.tree.leaves(grads))
    )
    actual = float(jax.jit(gradient_norm)(grads))
    assert actual == pytest.approx(expected, rel=1e-6)
