"""Gradient accumulation (config.grad_accum_steps, training/accumulation.py), in one process on
two simulated CPU devices: k micro-batches make the update of one batch holding all of them,
also when they hold different numbers of tokens (optax.MultiSteps, used before, averaged their
mean losses and so gave a micro-batch of few tokens as much weight as a full one)."""

import jax
import numpy as np
import optax
import pytest

from configs import default
from training import partitioning
from training import setup as training_setup
from training import state as train_state
from training.accumulation import accumulate_by_tokens
from training.steps import make_train_step

ROWS, LENGTH, VOCAB = 8, 16, 64


def tiny_config(batch_size: int, grad_accum_steps: int):
    config = default.get_config()
    config.data.vocab_size = VOCAB
    config.data.max_length = LENGTH
    model = config.model
    model.d_model, model.num_heads, model.head_dim, model.d_ff = 32, 4, 8, 64
    model.num_encoder_layers = model.num_decoder_layers = 1
    model.dropout_rate = 0.0  # off: both runs must see the same network
    config.batch_size = batch_size
    config.eval_batch_size = batch_size
    config.grad_accum_steps = grad_accum_steps
    config.schedule = "rsqrt"  # counts updates from 1: the first update has a learning rate
    config.warmup_steps = 3
    return config


def micro_batch(seed: int, tokens_per_row: int = 12) -> dict[str, np.ndarray]:
    """Rows of `tokens_per_row` tokens then padding."""
    rng = np.random.default_rng(seed)
    batch = {}
    for side in ("inputs", "targets"):
        tokens = rng.integers(3, VOCAB, (ROWS, LENGTH)).astype(np.int32)
        tokens[:, tokens_per_row:] = 0
        batch[side] = tokens
        batch[f"{side}_segment_ids"] = (tokens > 0).astype(np.int32)
        batch[f"{side}_positions"] = np.tile(np.arange(LENGTH, dtype=np.int32), (ROWS, 1))
    return batch


def concatenated(batches):
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def train(config, batches, optimizer=None):
    """The parameters before and after each train step on `batches` (host numpy trees), with
    training's own set-up on 2 devices (or its model with another `optimizer`)."""
    setup = training_setup.build(config, jax.devices()[:2])
    state = setup.fresh_state()
    step = setup.train_step
    if optimizer is not None:
        state = state.replace(opt_state=optimizer.init(state.params))
        shardings = train_state.state_shardings(setup.model, optimizer, setup.mesh)
        step = make_train_step(
            setup.model, optimizer, setup.mesh, shardings, label_smoothing=0.1, dropout_seed=0
        )
    params = [jax.device_get(state.params)]
    for batch in batches:
        rows = batch["inputs"].shape[0]
        state, _ = step(state, partitioning.global_batch(batch, setup.mesh, rows))
        params.append(jax.device_get(state.params))
    return params


def relative_difference(a, b) -> float:
    difference = optax.tree.norm(jax.tree.map(lambda x, y: x - y, a, b))
    return float(difference / optax.tree.norm(b))


def delta(after, before):
    return jax.tree.map(lambda x, y: np.float64(x) - np.float64(y), after, before)


def test_two_accumulated_micro_batches_make_the_update_of_one_double_batch():
    first, second = micro_batch(1), micro_batch(2)
    initial, after_one, after_two = train(tiny_config(ROWS, grad_accum_steps=2), [first, second])
    _, direct = train(tiny_config(2 * ROWS, grad_accum_steps=1), [concatenated([first, second])])

    same = jax.tree.map(np.array_equal, initial, after_one)
    assert all(jax.tree.leaves(same)), "the first micro-batch must not change the parameters"
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), initial, after_two)
    assert all(jax.tree.leaves(changed))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6), after_two, direct
    )


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_micro_batches_of_different_fill_make_the_gradient_of_one_batch():
    """SGD with rate 1: the update is minus the gradient, so this compares gradients: the
    accumulated one (3 micro-batches with 2, 7 and 16 tokens per row) against the gradient of
    one batch of all 24 rows, in float32."""
    batches = [micro_batch(seed, fill) for seed, fill in ((3, 2), (4, 7), (5, 16))]
    sgd = optax.sgd(1.0)
    initial, *_, accumulated = train(
        tiny_config(ROWS, grad_accum_steps=3), batches, accumulate_by_tokens(sgd, 3)
    )
    _, direct = train(tiny_config(3 * ROWS, grad_accum_steps=1), [concatenated(batches)], sgd)
    assert relative_difference(delta(accumulated, initial), delta(direct, initial)) < 1e-6
    # What averaging the micro-batches' mean gradients (optax.MultiSteps) gives instead:
    *_, averaged = train(
        tiny_config(ROWS, grad_accum_steps=3),
        batches,
        optax.MultiSteps(sgd, 3).gradient_transformation(),
    )
    assert relative_difference(delta(averaged, initial), delta(direct, initial)) > 0.05


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_training_config_accumulates_by_tokens():
    """The optimizer of a grad_accum_steps=2 config (Adam, two updates) against two batches
    of both micro-batches: with micro-batches of 3 and 14 tokens per row."""
    batches = [micro_batch(seed, fill) for seed, fill in ((6, 3), (7, 14), (8, 14), (9, 3))]
    initial, *_, accumulated = train(tiny_config(ROWS, grad_accum_steps=2), batches)
    pairs = [concatenated(batches[:2]), concatenated(batches[2:])]
    _, _, direct = train(tiny_config(2 * ROWS, grad_accum_steps=1), pairs)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6), accumulated, direct
    )
    assert relative_difference(delta(accumulated, initial), delta(direct, initial)) < 1e-4
