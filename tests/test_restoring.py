"""The one restore path on tiny random models, no training needed: parameter shapes from
`abstract_params` equal a real initialisation's; `param_target` places them on one device or
over a mesh; `restore_params` gives a saved checkpoint back exactly, averages like float64
numpy, and names the first parameter that does not fit."""

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import linen as nn

from model import Transformer, TransformerConfig
from model.parameters import abstract_params, init_params
from training import partitioning, restoring

TINY = TransformerConfig(
    vocab_size=48,
    d_model=16,
    num_heads=2,
    head_dim=8,
    d_ff=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
    max_length=16,
)


def save_params(checkpoints_dir: Path, step: int, params) -> None:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(epath.Path(checkpoints_dir / str(step) / "params"), params)


def test_abstract_params_are_the_shapes_of_a_real_initialisation():
    model = Transformer(TINY)
    boxed = abstract_params(model)
    real = nn.unbox(init_params(model, jax.random.key(3)))
    abstract = nn.unbox(boxed)
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real), strict=True):
        assert (a.shape, a.dtype) == (r.shape, r.dtype)
    names = nn.get_partition_spec(boxed)["source_embedding"]["embedding"]
    assert tuple(names) == ("vocab", "embed")


def test_param_target_on_one_device_or_over_a_mesh():
    model = Transformer(TINY)
    one = jax.tree.leaves(restoring.param_target(model))
    assert all(leaf.sharding.device_set == {jax.local_devices()[0]} for leaf in one)
    mesh = partitioning.make_mesh((2, 2, 2), jax.devices()[:8])
    sharded = restoring.param_target(model, mesh)
    embedding = sharded["source_embedding"]["embedding"]  # [vocab 48, embed 16]
    assert tuple(embedding.sharding.spec) == ("tensor", "fsdp")
    assert embedding.sharding.shard_shape(embedding.shape) == (24, 8)


def test_restore_params_exactly_averaged_and_checked(tmp_path):
    model = Transformer(TINY)
    checkpoints = tmp_path / "checkpoints"
    saved = [nn.unbox(init_params(model, jax.random.key(seed))) for seed in (1, 2, 3)]
    for step, params in enumerate(saved, start=1):
        save_params(checkpoints, step, params)

    mesh = partitioning.make_mesh((1, 4, 2), jax.devices()[:8])
    target = restoring.param_target(model, mesh)
    one = restoring.restore_params(checkpoints, [2], target)
    for got, want in zip(jax.tree.leaves(one), jax.tree.leaves(saved[1]), strict=True):
        assert len(got.sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    mean = restoring.restore_params(checkpoints, [1, 2, 3], restoring.param_target(model))
    expected = jax.tree.map(lambda *xs: np.mean([np.float64(x) for x in xs], axis=0), *saved)
    for got, want in zip(jax.tree.leaves(mean), jax.tree.leaves(expected), strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)

    wider = Transformer(TransformerConfig(**{**TINY.__dict__, "d_ff": 64}))
    with pytest.raises(restoring.RestoreError, match=r"wi/bias is \(32,\) in the checkpoint"):
        restoring.restore_params(checkpoints, [1], restoring.param_target(wider))
