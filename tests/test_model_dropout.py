"""The hash-based dropout: right keep rate, independent coins, deterministic given the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.dropout import Dropout, hash32, keep_mask

SHAPE = (8, 64, 512)  # 262,144 coins: binomial standard error of a rate about 0.0006


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_keep_rate(rate):
    kept = np.asarray(keep_mask(jnp.uint32(7), SHAPE, rate)).mean()
    sigma = np.sqrt(rate * (1 - rate) / np.prod(SHAPE))
    assert abs(kept - (1 - rate)) < 5 * sigma


def test_coins_are_independent_across_seeds_and_neighbours():
    rate, n = 0.5, np.prod(SHAPE)
    a = np.asarray(keep_mask(jnp.uint32(1), SHAPE, rate)).ravel().astype(float)
    b = np.asarray(keep_mask(jnp.uint32(2), SHAPE, rate)).ravel().astype(float)
    limit = 5 / np.sqrt(n)  # correlations of independent coins are about N(0, 1/n)
    assert abs(np.corrcoef(a, b)[0, 1]) < limit  # two layers, or two steps
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < limit  # neighbouring features
    assert abs(np.corrcoef(a[:-512], a[512:])[0, 1]) < limit  # neighbouring positions


def test_hash_is_a_bijection_on_a_block():
    x = jnp.arange(2**20, dtype=jnp.uint32) * jnp.uint32(4099)
    assert len(np.unique(np.asarray(hash32(x)))) == 2**20


def test_dropout_module():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 256)), jnp.float32)
    layer = Dropout(0.25)

    def apply(key, deterministic=False):
        return layer.apply({}, x, deterministic, rngs={"dropout": jax.random.key(key)})

    np.testing.assert_array_equal(apply(0, deterministic=True), x)
    np.testing.assert_array_equal(apply(0), apply(0))  # same key, same mask
    assert (np.asarray(apply(0)) != np.asarray(apply(1))).any()
    y = np.asarray(apply(0))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.03
    assert (
        np.asarray(Dropout(1.0).apply({}, x, False, rngs={"dropout": jax.random.key(0)})) == 0
    ).all()


def test_masks_do_not_depend_on_sharding():
    devices = np.array(jax.devices()[:8]).reshape(4, 2)
    mesh = jax.sharding.Mesh(devices, ("rows", "features"))
    sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec("rows", None, "features")
    )
    sharded = jax.jit(lambda s: keep_mask(s, SHAPE, 0.1), out_shardings=sharding)(jnp.uint32(3))
    np.testing.assert_array_equal(
        np.asarray(sharded), np.asarray(keep_mask(jnp.uint32(3), SHAPE, 0.1))
    )
