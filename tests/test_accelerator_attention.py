"""Fused attention that respects packing: what runs on CPU.

The kernels themselves need their hardware (tests/test_accelerator.py compares them there);
here: the segments equal a brute-force mask; the exact call the cuDNN path makes, run through
XLA, equals a float64 reference on packed, padded and causal batches, forward and gradients;
the splash kernel itself, in Pallas' interpreter, equals it too (also per shard on a mesh); a
whole model with either route gives the plain path's logits; and the config choice and its
errors.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import Transformer, TransformerConfig
from model import fused_attention as fused
from model.attention import dot_product_attention
from model.config import choose_attention_implementation, resolve_attention_implementation
from model.masks import AttentionSegments, attention_segments


def packed_segments(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """[batch, length] segment ids like the input pipeline's: 1, 1, 2, 2, 2, 3, ..., 0 (padding)
    at the end; the first row is full (no padding), the last unpacked (one example)."""
    rows = []
    for row in range(batch):
        ids, segment, position = [], 1, 0
        fill = length if row == 0 else int(rng.integers(length // 2, length))
        while position < fill:
            size = min(int(rng.integers(1, max(2, length // 3))), fill - position)
            if row == batch - 1:
                size = fill
            ids += [segment] * size
            segment, position = segment + 1, position + size
        rows.append(ids + [0] * (length - len(ids)))
    return np.asarray(rows, np.int32)


def paired_segments(
    rng: np.random.Generator, batch: int, q_len: int, kv_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Query (target) and key (source) ids of the same packed examples, different lengths."""
    q_ids = packed_segments(rng, batch, q_len)
    kv_ids = np.zeros((batch, kv_len), np.int32)
    for row in range(batch):
        count = q_ids[row].max()
        sizes = rng.multinomial(kv_len - count - int(rng.integers(0, 3)), [1 / count] * count) + 1
        kv_ids[row, : sizes.sum()] = np.repeat(np.arange(1, count + 1), sizes)
    return q_ids, kv_ids


def reference_attention(q, k, v, q_ids, kv_ids, causal: bool) -> np.ndarray:
    """float64 NumPy attention; rows of queries that see no key are left at 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    allowed = (q_ids[:, :, None] == kv_ids[:, None, :]) & (q_ids[:, :, None] > 0)
    if causal:
        allowed &= np.tril(np.ones((q.shape[1], k.shape[1]), bool))
    logits = np.where(allowed[:, None], logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0))
    weights = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bnqk,bknh->bqnh", weights, v)


def random_qkv(seed: int, batch: int, q_len: int, kv_len: int, heads: int = 2, dim: int = 16):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, q_len, heads, dim), jnp.float32)
    k = jax.random.normal(keys[1], (batch, kv_len, heads, dim), jnp.float32)
    v = jax.random.normal(keys[2], (batch, kv_len, heads, dim), jnp.float32)
    return q, k, v


CASES = {  # name: (q_len, kv_len, causal)
    "encoder self-attention": (24, 24, False),
    "decoder self-attention (causal)": (24, 24, True),
    "cross-attention, odd lengths": (19, 27, False),
}


def case_inputs(name: str, seed: int = 0):
    q_len, kv_len, causal = CASES[name]
    rng = np.random.default_rng(seed)
    if q_len == kv_len:
        q_ids = kv_ids = packed_segments(rng, 3, q_len)
    else:
        q_ids, kv_ids = paired_segments(rng, 3, q_len, kv_len)
    segments = AttentionSegments(jnp.asarray(q_ids), jnp.asarray(kv_ids), causal)
    return random_qkv(seed, 3, q_len, kv_len), segments, q_ids, kv_ids, causal


def real_rows(q_ids: np.ndarray) -> np.ndarray:
    return q_ids > 0  # [batch, q_len]: outputs at padding queries are not compared


def test_segments_equal_a_brute_force_mask():
    rng = np.random.default_rng(1)
    q_ids, kv_ids = paired_segments(rng, 4, 12, 17)
    q_tokens = np.where(q_ids > 0, rng.integers(1, 50, q_ids.shape), 0)
    kv_tokens = np.where(kv_ids > 0, rng.integers(1, 50, kv_ids.shape), 0)
    mask = np.asarray(attention_segments(q_tokens, kv_tokens, q_ids, kv_ids).dense())
    for b in range(4):
        for i in range(12):
            for j in range(17):
                expected = q_ids[b, i] > 0 and q_ids[b, i] == kv_ids[b, j]
                assert mask[b, 0, i, j] == expected
    causal = np.asarray(attention_segments(q_tokens, q_tokens, q_ids, q_ids, causal=True).dense())
    assert not np.triu(causal[:, 0], k=1).any()
    # Unpacked rows: every real token is segment 1, padding is 0.
    unpacked = attention_segments(q_tokens, kv_tokens)
    np.testing.assert_array_equal(unpacked.query, (q_tokens > 0).astype(np.int32))


@pytest.mark.parametrize("name", CASES)
def test_the_cudnn_call_keeps_packed_examples_apart(name, monkeypatch):
    """fused_attention's cuDNN route, with the same arguments sent through XLA instead of cuDNN,
    equals the float64 reference: the mask it passes carries the segments, padding and causality."""
    (q, k, v), segments, q_ids, kv_ids, causal = case_inputs(name)
    as_xla = functools.partial(fused.cudnn_attention, implementation="xla")
    monkeypatch.setattr(fused, "cudnn_attention", as_xla)
    out = fused.fused_attention(q, k, v, segments, "cudnn")
    expected = reference_attention(q, k, v, q_ids, kv_ids, causal)
    real = real_rows(q_ids)
    np.testing.assert_allclose(np.asarray(out)[real], expected[real], atol=2e-5)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("name", CASES)
def test_cudnn_call_gradients_equal_the_plain_path(name, monkeypatch):
    (q, k, v), segments, q_ids, *_ = case_inputs(name, seed=3)
    monkeypatch.setattr(
        fused, "cudnn_attention", functools.partial(fused.cudnn_attention, implementation="xla")
    )
    real = jnp.asarray(real_rows(q_ids))[:, :, None, None]
    cotangent = jax.random.normal(jax.random.key(9), q.shape)

    def loss(fn, q, k, v):
        return jnp.sum(jnp.where(real, fn(q, k, v), 0.0) * cotangent)

    fused_fn = lambda q, k, v: fused.fused_attention(q, k, v, segments, "cudnn")
    plain_fn = lambda q, k, v: dot_product_attention(
        q, k, v, segments.dense(), return_weights=True
    )[0]
    got = jax.grad(functools.partial(loss, fused_fn), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(functools.partial(loss, plain_fn), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("encoder self-attention", marks=pytest.mark.slow),
        pytest.param("decoder self-attention (causal)", marks=pytest.mark.slow),
        "cross-attention, odd lengths",  # padding to 128, a padded query that sees no key
    ],
)
def test_splash_kernel_in_the_interpreter_keeps_packed_examples_apart(name):
    """The real splash kernel (Pallas interpreter on CPU) with the ids we pass, lengths padded
    to its 128-blocks: equal to the float64 reference; finite even where a padded query sees
    no key."""
    (q, k, v), segments, q_ids, kv_ids, causal = case_inputs(name, seed=5)
    out = np.asarray(fused.fused_attention(q, k, v, segments, "splash", interpret=True))
    expected = reference_attention(q, k, v, q_ids, kv_ids, causal)
    real = real_rows(q_ids)
    np.testing.assert_allclose(out[real], expected[real], atol=2e-5)
    assert np.isfinite(out).all()


@pytest.mark.slow
def test_splash_kernel_gradients_and_per_shard_run_on_a_mesh():
    """Gradients of the interpreted splash kernel equal the plain path's; under a 2x2 mesh
    (batch over data, heads over tensor, the training rules) shard_map gives the same output."""
    from flax import linen as nn
    from jax.sharding import AxisType, Mesh

    from training.partitioning import LOGICAL_AXIS_RULES

    (q, k, v), segments, q_ids, *_ = case_inputs("decoder self-attention (causal)", seed=7)
    q, k, v = (jnp.concatenate([x, x[:1]]) for x in (q, k, v))  # 4 rows: divisible by 2
    segments = AttentionSegments(
        jnp.concatenate([segments.query, segments.query[:1]]),
        jnp.concatenate([segments.key, segments.key[:1]]),
        True,
    )
    real = segments.query > 0
    cotangent = jax.random.normal(jax.random.key(2), q.shape)

    def loss(fn, q, k, v):
        return jnp.sum(jnp.where(real[:, :, None, None], fn(q, k, v), 0.0) * cotangent)

    splash_fn = lambda q, k, v: fused.fused_attention(q, k, v, segments, "splash", interpret=True)
    plain_fn = lambda q, k, v: dot_product_attention(q, k, v, segments.dense())[0]
    got = jax.grad(functools.partial(loss, splash_fn), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(functools.partial(loss, plain_fn), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5)

    devices = np.asarray(jax.devices()[:4]).reshape(2, 1, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        sharded = jax.jit(splash_fn)(q, k, v)
    np.testing.assert_allclose(
        np.asarray(sharded)[np.asarray(real)],
        np.asarray(plain_fn(q, k, v))[np.asarray(real)],
        atol=2e-5,
    )


TINY = dict(
    vocab_size=40, d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1,
    num_decoder_layers=1, max_length=64, dropout_rate=0.0,
)  # fmt: skip


def packed_batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets_ids, inputs_ids = paired_segments(rng, 3, 20, 23)  # queries: the targets
    batch = {"inputs_segment_ids": inputs_ids, "targets_segment_ids": targets_ids}
    for name in ("inputs", "targets"):
        ids = batch[f"{name}_segment_ids"]
        batch[name] = np.where(ids > 0, rng.integers(1, 40, ids.shape), 0).astype(np.int32)
        positions = np.zeros_like(ids)
        for row in range(ids.shape[0]):
            for segment in range(1, ids[row].max() + 1):
                where = ids[row] == segment
                positions[row, where] = np.arange(where.sum())
        batch[f"{name}_positions"] = positions
    return batch


@pytest.mark.parametrize(
    "implementation", [pytest.param("cudnn", marks=pytest.mark.slow), "splash"]
)
def test_a_packed_model_with_fused_attention_gives_the_plain_logits(implementation, monkeypatch):
    """The whole model, attention_implementation set, kernels swapped for their CPU stand-ins
    (cuDNN's call through XLA; splash interpreted): the logits of a packed batch equal the
    plain path's, so every layer hands the segments on."""
    monkeypatch.setattr(
        fused, "cudnn_attention", functools.partial(fused.cudnn_attention, implementation="xla")
    )
    interpreted = fused.splash_attention
    monkeypatch.setattr(
        fused, "splash_attention", lambda *args, interpret=False: interpreted(*args, interpret=True)
    )
    batch = packed_batch()
    dtype = "bfloat16" if implementation == "cudnn" else "float32"
    plain = Transformer(TransformerConfig(**TINY, dtype=dtype))
    fused_model = Transformer(
        TransformerConfig(**TINY, dtype=dtype, attention_implementation=implementation)
    )
    params = plain.init(jax.random.key(0), batch["inputs"], batch["targets"])["params"]
    want = np.asarray(plain.apply({"params": params}, **batch), np.float32)
    got = np.asarray(fused_model.apply({"params": params}, **batch), np.float32)
    real = batch["targets"] > 0
    tolerance = 2e-2 if dtype == "bfloat16" else 2e-5
    np.testing.assert_allclose(got[real], want[real], atol=tolerance, rtol=tolerance)


def test_weights_requested_take_the_plain_path():
    (q, k, v), segments, *_ = case_inputs("encoder self-attention")
    out, weights = dot_product_attention(
        q, k, v, segments, return_weights=True, implementation="cudnn"
    )
    assert weights is not None and weights.shape == (3, 2, 24, 24)


CHOICES = [  # requested, platform, compute capability, dtype, attention dropout -> chosen
    ("auto", "cuda", "9.0", "bfloat16", 0.0, "cudnn"),
    ("auto", "cuda", "8.0", "bfloat16", 0.0, "cudnn"),
    ("auto", "cuda", "7.0", "bfloat16", 0.0, "xla"),  # V100: no cuDNN flash attention
    ("auto", "cuda", "9.0", "float32", 0.0, "xla"),
    ("auto", "cuda", "9.0", "bfloat16", 0.1, "xla"),  # attention dropout: logged fallback
    ("auto", "rocm", None, "bfloat16", 0.0, "xla"),
    ("auto", "tpu", None, "bfloat16", 0.0, "splash"),
    ("auto", "tpu", None, "bfloat16", 0.1, "xla"),
    ("auto", "cpu", None, "float32", 0.0, "xla"),
    ("cudnn", "cpu", None, "float32", 0.0, "xla"),  # a GPU checkpoint translated on a CPU
    ("splash", "cuda", "9.0", "bfloat16", 0.0, "xla"),
    ("cudnn", "cuda", "9.0", "bfloat16", 0.1, "cudnn"),  # TransformerConfig rejects it
    ("xla", "tpu", None, "bfloat16", 0.0, "xla"),
]


@pytest.mark.parametrize("requested,platform,capability,dtype,dropout,chosen", CHOICES)
def test_attention_choice(requested, platform, capability, dtype, dropout, chosen):
    implementation, why = choose_attention_implementation(
        requested,
        platform=platform,
        compute_capability=capability,
        dtype=dtype,
        head_dim=64,
        attention_dropout_rate=dropout,
    )
    assert implementation == chosen and why


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(attention_implementation="cudnn", attention_dropout_rate=0.1, dtype="bfloat16"),
         "has no dropout on the attention weights"),
        (dict(attention_implementation="splash", attention_dropout_rate=0.1),
         "has no dropout on the attention weights"),
        (dict(attention_implementation="cudnn", dtype="float32"), "computes in bfloat16"),
        (dict(attention_implementation="cudnn", dtype="bfloat16", head_dim=12), "multiple of 8"),
        (dict(attention_implementation="flash"), "must be one of"),
    ],
)  # fmt: skip
def test_fused_attention_config_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**fields)


def test_the_choice_is_logged_and_a_bad_request_is_a_config_error(caplog):
    from training.configuration import model_config
    from training.errors import ConfigError

    with caplog.at_level(logging.INFO):
        assert (
            resolve_attention_implementation({"attention_implementation": "auto"}, "cpu") == "xla"
        )
    assert "Attention: xla (requested 'auto'" in caplog.text
    with caplog.at_level(logging.WARNING):
        resolve_attention_implementation({"attention_implementation": "splash"}, "cpu")
    assert "'splash' needs a TPU" in caplog.text

    from configs import default

    config = default.get_config()
    config.model.attention_implementation = "fused"
    with pytest.raises(ConfigError, match="attention_implementation must be 'auto' or one of"):
        model_config(config, platform="cpu")
