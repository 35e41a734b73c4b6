"""Gradient accumulation (optax.MultiSteps through config.grad_accum_steps), in one process on
two simulated CPU devices: the first micro-batch leaves the parameters alone, and two
micro-batches then make exactly the update of one step on both at once."""

import jax
import numpy as np

from configs import default
from model import Transformer
from training import configuration, partitioning, steps
from training import state as train_state

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
    config.grad_accum_steps = grad_accum_steps
    config.schedule = "rsqrt"  # counts updates from 1: the first update has a learning rate
    config.warmup_steps = 3
    return config


def micro_batch(seed: int) -> dict[str, np.ndarray]:
    """Rows of 12 tokens then padding: every micro-batch has the same number of tokens."""
    rng = np.random.default_rng(seed)
    batch = {}
    for side in ("inputs", "targets"):
        tokens = rng.integers(3, VOCAB, (ROWS, LENGTH)).astype(np.int32)
        tokens[:, 12:] = 0
        batch[side] = tokens
        batch[f"{side}_segment_ids"] = (tokens > 0).astype(np.int32)
        batch[f"{side}_positions"] = np.tile(np.arange(LENGTH, dtype=np.int32), (ROWS, 1))
    return batch


def train(config, batches):
    """The states after each train step on `batches` (as host numpy trees)."""
    mesh = partitioning.make_mesh((2, 1, 1), jax.devices()[:2])
    model = Transformer(configuration.model_config(config))
    optimizer = train_state.make_optimizer(config, train_state.learning_rate_schedule(config))
    state, shardings = train_state.create_train_state(model, optimizer, mesh, jax.random.key(0))
    step = steps.make_train_step(
        model, optimizer, mesh, shardings, label_smoothing=0.1, dropout_seed=0
    )
    params = [jax.device_get(state.params)]
    for batch in batches:
        rows = batch["inputs"].shape[0]
        state, _ = step(state, partitioning.global_batch(batch, mesh, rows))
        params.append(jax.device_get(state.params))
    return params


def test_two_accumulated_micro_batches_make_the_update_of_one_double_batch():
    first, second = micro_batch(1), micro_batch(2)
    both = {key: np.concatenate([first[key], second[key]]) for key in first}

    initial, after_one, after_two = train(tiny_config(ROWS, grad_accum_steps=2), [first, second])
    _, direct = train(tiny_config(2 * ROWS, grad_accum_steps=1), [both])

    same = jax.tree.map(np.array_equal, initial, after_one)
    assert all(jax.tree.leaves(same)), "the first micro-batch must not change the parameters"
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), initial, after_two)
    assert all(jax.tree.leaves(changed))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6), after_two, direct
    )
