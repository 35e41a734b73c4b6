"""The projections with a hand-written backward pass equal plain einsum and its autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from model.matmul import dense_dot_general, project


@pytest.mark.parametrize(
    "x_shape, kernel_shape, contracting, formula",
    [
        ((2, 5, 6), (6, 3, 2, 4), 1, "ble,etnh->bltnh"),  # fused Q, K, V
        ((2, 5, 2, 4), (2, 4, 6), 2, "blnh,nhe->ble"),  # W^O
        ((3, 6), (6, 7), 1, "te,ef->tf"),
    ],
)
def test_values_and_gradients_equal_einsum(x_shape, kernel_shape, contracting, formula):
    rng = np.random.default_rng(sum(x_shape) + sum(kernel_shape))
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
    weights = jnp.asarray(rng.standard_normal(jnp.einsum(formula, x, kernel).shape), jnp.float32)

    def loss(f):
        return lambda x, k: jnp.sum(jnp.sin(f(x, k)) * weights)

    ours = jax.jit(jax.value_and_grad(loss(lambda x, k: project(x, k, contracting)), (0, 1)))
    reference = jax.value_and_grad(loss(lambda x, k: jnp.einsum(formula, x, k)), (0, 1))
    (value, grads), (ref_value, ref_grads) = ours(x, kernel), reference(x, kernel)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad.shape == ref_grad.shape
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_dense_with_it_equals_flax_dense():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5)), jnp.float32)
    plain = nn.Dense(4)
    ours = nn.Dense(4, dot_general=dense_dot_general)
    params = plain.init(jax.random.key(0), x)
    np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-6)
    grad = jax.grad(lambda p: ours.apply(p, x).sum())(params)
    ref = jax.grad(lambda p: plain.apply(p, x).sum())(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grad, ref)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="Cannot contract"):
        project(jnp.ones((2, 5)), jnp.ones((4, 3)))
