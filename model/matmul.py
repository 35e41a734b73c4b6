"""The model's weight products, with a backward pass laid out for XLA:CPU.

Every projection is `x [..., in...] · W [in..., out...]`. Differentiated as written, XLA:CPU
computes the weight gradient transposed (as [out, in]) and the optimizer then reads it
across the grain, with extra transposes (measured in docs/performance.md). Here the backward
pass is spelled out, with xᵀ materialized behind an optimization barrier so that XLA keeps
the natural product xᵀ · dy -> [in, out]. Values and gradients are the same as autodiff's
(the tests compare them); only the memory layout differs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_vjp
def _matmul(x: Array, w: Array) -> Array:
    """[tokens, in] @ [in, out] -> [tokens, out]."""
    return x @ w


def _matmul_forward(x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return x @ w, (x, w)


def _matmul_backward(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, w = residuals
    x_transposed = jax.lax.optimization_barrier(x.T)  # [in, tokens], kept as a real array
    return dy @ w.T, x_transposed @ dy


_matmul.defvjp(_matmul_forward, _matmul_backward)


def project(x: Array, kernel: Array, num_contracting: int = 1) -> Array:
    """Contracts the last `num_contracting` axes of x with the first ones of kernel:
    x [*batch, *in] · kernel [*in, *out] -> [*batch, *out]."""
    in_shape = kernel.shape[:num_contracting]
    out_shape = kernel.shape[num_contracting:]
    if x.shape[x.ndim - num_contracting :] != in_shape:
        raise ValueError(f"Cannot contract x {x.shape} with kernel {kernel.shape}.")
    batch_shape = x.shape[: x.ndim - num_contracting]
    x2d = x.reshape(math.prod(batch_shape), math.prod(in_shape))
    w2d = kernel.reshape(math.prod(in_shape), math.prod(out_shape))
    # The layout trick is measured on XLA:CPU only; GPU/TPU compilers choose their own layouts,
    # where the barrier would only block fusions, so they get plain autodiff.
    y = _matmul(x2d, w2d) if jax.default_backend() == "cpu" else x2d @ w2d
    return y.reshape(*batch_shape, *out_shape)


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, **_) -> Array:
    """`lax.dot_general` for `flax.linen.Dense` (which contracts the last axis of its input with
    the first of its kernel), through `project`."""
    (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = dimension_numbers
    if tuple(lhs_contracting) != (lhs.ndim - 1,) or tuple(rhs_contracting) != (0,):
        raise ValueError(f"Unsupported dimension numbers {dimension_numbers} for Dense.")
    if lhs_batch or rhs_batch:
        raise ValueError("Batch dimensions are not supported here.")
    del precision  # float32 products are exact-precision on CPU; bf16 follows the dtypes
    return project(lhs, jnp.asarray(rhs, lhs.dtype))
