"""Dropout with masks from a counter-based integer hash, seeded by flax's 'dropout' rng.

Why not `jax.random.bernoulli`: its threefry generator costs about 20 integer rounds per
element, a sizeable share of a CPU train step with the base model's 32 dropout layers
(docs/performance.md). Dropout needs independent-looking coin flips, not a cryptographic
stream: here each call
draws one 32-bit seed from its threefry key (so masks still depend on the key, the step and the
layer exactly as flax's would), and each element's coin is a 32-bit integer hash of
(seed, element index), compared with (1 - rate) * 2^32. The hash is Wellons' "lowbias32"
(a bijection of uint32 with near-ideal avalanche), applied to the index and again after mixing
in the seed. Masks are deterministic given the key and identical however the array is sharded
(the index is the global position).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array


def hash32(x: Array) -> Array:
    """lowbias32: a uint32 -> uint32 bijection whose output bits each depend on all input bits."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keep_mask(seed: Array, shape: tuple[int, ...], rate: float) -> Array:
    """bool [shape]: True with probability 1 - rate (to within 2^-32), independently per element.

    seed: uint32 scalar. Element indices beyond 2^32 wrap around (repeat the mask), far beyond
    any activation this model makes.
    """
    index = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
    threshold = jnp.uint32(min(round((1.0 - rate) * 2**32), 2**32 - 1))
    return hash32(hash32(index) ^ seed) < threshold


def random_seed(rng: Array) -> Array:
    """A uint32 seed from a jax.random key (one threefry call, not one per element)."""
    return jax.random.bits(rng, (), jnp.uint32)


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability `rate`, scale the rest by
    1 / (1 - rate). Same interface as `flax.linen.Dropout` for this model's use."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(random_seed(self.make_rng("dropout")), x.shape, self.rate)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))
