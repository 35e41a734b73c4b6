"""The network against the paper's formulas and its invariances (padding, causality, packing,
cached decoding), on small random models."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, big
from model import Transformer, TransformerConfig
from model.attention import dot_product_attention
from model.embedding import sinusoidal_table
from model.param_count import count_parameters

TINY = TransformerConfig(
    vocab_size=40,
    d_model=32,
    num_heads=4,
    head_dim=8,
    d_ff=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    max_length=32,
    dropout_rate=0.0,
)


def unboxed(params):
    from flax import linen as nn

    return nn.unbox(params)


def random_tokens(rng: np.random.Generator, shape, vocab: int = 40) -> jnp.ndarray:
    return jnp.asarray(rng.integers(3, vocab, shape), jnp.int32)


def numpy_attention(q, k, v, mask):
    """softmax(Q Kᵀ / √d_k) V per head, in float64. q [b, t, n, h], mask [b, 1|n, t, s]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    logits = np.where(mask, logits, -np.inf)
    with np.errstate(invalid="ignore"):  # a fully masked query row gives NaN: callers skip it
        logits -= logits.max(-1, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("with_weights", [False, True])  # jax.nn path and the plain path
def test_attention_matches_float64_formula(with_weights):
    rng = np.random.default_rng(11)
    batch, q_len, kv_len, heads, head_dim = 3, 5, 7, 4, 16
    q, k, v = (
        rng.standard_normal((batch, n, heads, head_dim)).astype(np.float32)
        for n in (q_len, kv_len, kv_len)
    )
    mask = rng.random((batch, 1, q_len, kv_len)) < 0.7
    mask[..., 0] = True  # every query sees at least one key
    out, weights = dot_product_attention(
        jnp.asarray(q),
        jnp.asarray(k),
        jnp.asarray(v),
        jnp.asarray(mask),
        return_weights=with_weights,
    )
    expected = numpy_attention(q, k, v, mask)
    rel = np.abs(np.asarray(out, np.float64) - expected).max() / np.abs(expected).max()
    assert rel < 1e-5
    if with_weights:
        assert weights.shape == (batch, heads, q_len, kv_len)
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)
        assert np.all(np.asarray(weights)[~np.broadcast_to(mask, weights.shape)] == 0)


def test_multi_head_module_matches_float64_projections():
    """The encoder's first self-attention, recomputed in numpy from its own parameters."""
    rng = np.random.default_rng(12)
    cfg = TINY
    model = Transformer(cfg)
    inputs = random_tokens(rng, (2, 6))
    inputs = inputs.at[1, 4:].set(0)  # padding in the second row
    variables = model.init(jax.random.key(1), inputs, inputs)
    params = unboxed(variables["params"])
    x = rng.standard_normal((2, 6, cfg.d_model)).astype(np.float32)
    mask = np.asarray(inputs > 0)[:, None, :, None] & np.asarray(inputs > 0)[:, None, None, :]

    def apply_attention(module, x):
        return module.encoder.layers[0].self_attention(x, jnp.asarray(mask))

    out = model.apply({"params": params}, jnp.asarray(x), method=apply_attention)
    p = params["encoder"]["layer_0"]["self_attention"]
    qkv = np.einsum("ble,etnh->tblnh", x.astype(np.float64), np.asarray(p["qkv"], np.float64))
    heads = numpy_attention(qkv[0], qkv[1], qkv[2], mask)
    heads = np.nan_to_num(heads)  # fully masked (padding) queries: compared below only where real
    expected = np.einsum("blnh,nhe->ble", heads, np.asarray(p["out"], np.float64))
    real = np.asarray(inputs > 0)
    rel = np.abs(np.asarray(out)[real] - expected[real]).max() / np.abs(expected[real]).max()
    assert rel < 1e-5


def test_sinusoidal_table_is_the_papers_formula():
    d_model, max_length = 16, 50
    table = sinusoidal_table(max_length, d_model)
    for pos in range(max_length):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)


def expected_parameter_count(vocab: int, d: int, d_ff: int, layers: int) -> int:
    """The paper's architecture counted by hand: shared embedding, bias-free attention
    projections, feed-forward with biases, LayerNorm scale+bias."""
    attention = 4 * d * d
    feed_forward = 2 * d * d_ff + d_ff + d
    norm = 2 * d
    encoder_layer = attention + feed_forward + 2 * norm
    decoder_layer = 2 * attention + feed_forward + 3 * norm
    return vocab * d + layers * (encoder_layer + decoder_layer)


@pytest.mark.parametrize(
    "get_config, approx_millions", [(base.get_config, 63.0), (big.get_config, 214.2)]
)
def test_parameter_counts_of_base_and_big(get_config, approx_millions):
    m = get_config().model
    total = sum(count for _, count in count_parameters(m))
    assert total == expected_parameter_count(m.vocab_size, m.d_model, m.d_ff, 6)
    assert round(total / 1e6, 1) == approx_millions


def logits_of(model, params, inputs, targets, **kwargs):
    return np.asarray(model.apply({"params": params}, inputs, targets, **kwargs))


@pytest.fixture(scope="module")
def tiny():
    model = Transformer(TINY)
    tokens = jnp.ones((2, 8), jnp.int32)
    params = unboxed(model.init(jax.random.key(0), tokens, tokens)["params"])
    return model, params


def test_padding_changes_nothing_at_real_positions(tiny):
    model, params = tiny
    rng = np.random.default_rng(13)
    inputs, targets = random_tokens(rng, (2, 6)), random_tokens(rng, (2, 5))
    reference = logits_of(model, params, inputs, targets)
    padded_inputs = jnp.pad(inputs, ((0, 0), (0, 4)))
    padded_targets = jnp.pad(targets, ((0, 0), (0, 3)))
    padded = logits_of(model, params, padded_inputs, padded_targets)
    np.testing.assert_allclose(padded[:, :5], reference, atol=1e-5, rtol=1e-5)
    assert np.isfinite(padded).all()  # fully masked padding queries give no NaN


def test_decoder_is_causal(tiny):
    model, params = tiny
    rng = np.random.default_rng(14)
    inputs, targets = random_tokens(rng, (2, 6)), random_tokens(rng, (2, 7))
    reference = logits_of(model, params, inputs, targets)
    changed = targets.at[:, 4:].set(random_tokens(rng, (2, 3)))
    after = logits_of(model, params, inputs, changed)
    # Position i predicts target i from targets < i, so positions 0..4 must not move.
    np.testing.assert_allclose(after[:, :5], reference[:, :5], atol=1e-6)
    assert np.abs(after[:, 5:] - reference[:, 5:]).max() > 1e-4


def test_packed_row_equals_each_sequence_alone(tiny):
    model, params = tiny
    rng = np.random.default_rng(15)
    src_a, tgt_a = random_tokens(rng, (1, 4)), random_tokens(rng, (1, 3))
    src_b, tgt_b = random_tokens(rng, (1, 5)), random_tokens(rng, (1, 6))
    alone_a = logits_of(model, params, src_a, tgt_a)
    alone_b = logits_of(model, params, src_b, tgt_b)

    def pack(a, b, pad):
        tokens = jnp.concatenate([a, b, jnp.zeros((1, pad), jnp.int32)], axis=1)
        segments = jnp.asarray([[1] * a.shape[1] + [2] * b.shape[1] + [0] * pad], jnp.int32)
        positions = jnp.asarray(
            [list(range(a.shape[1])) + list(range(b.shape[1])) + [0] * pad], jnp.int32
        )
        return tokens, segments, positions

    inputs, inputs_segments, inputs_positions = pack(src_a, src_b, 2)
    targets, targets_segments, targets_positions = pack(tgt_a, tgt_b, 1)
    packed = logits_of(
        model,
        params,
        inputs,
        targets,
        inputs_positions=inputs_positions,
        targets_positions=targets_positions,
        inputs_segment_ids=inputs_segments,
        targets_segment_ids=targets_segments,
    )
    np.testing.assert_allclose(packed[:, :3], alone_a, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(packed[:, 3:9], alone_b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_steps_reproduce_teacher_forced_logits(tiny, beams):
    model, params = tiny
    rng = np.random.default_rng(16)
    inputs = random_tokens(rng, (2, 6)).at[1, 5:].set(0)
    targets = random_tokens(rng, (2 * beams, 7))  # beams of sentence s: rows s*beams .. +beams-1
    repeated_inputs = jnp.repeat(inputs, beams, axis=0)
    reference = logits_of(model, params, repeated_inputs, targets)

    variables = {"params": params}
    encoded = model.apply(variables, inputs, method=Transformer.encode)
    cache = model.apply(variables, encoded, 7, 2 * beams, method=Transformer.init_cache)
    step = jax.jit(
        lambda tok, c: model.apply(variables, tok, inputs, c, method=Transformer.decode_step)
    )
    previous = jnp.zeros((2 * beams, 1), jnp.int32)
    for i in range(7):
        logits, cache = step(previous, cache)
        np.testing.assert_allclose(np.asarray(logits), reference[:, i], atol=1e-5, rtol=1e-5)
        previous = targets[:, i : i + 1]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(norm_position="pre"),
        dict(position_embedding="learned"),
        dict(share_embeddings=False, tie_output_projection=False),
        pytest.param(dict(remat=True), marks=pytest.mark.slow),  # remat: also compared below
    ],
)
def test_options_run_and_train(overrides):
    cfg = TransformerConfig(
        **{
            **TINY.__dict__,
            **overrides,
            "dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "relu_dropout_rate": 0.1,
        }
    )
    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    inputs, targets = random_tokens(rng, (2, 6)), random_tokens(rng, (2, 5))
    params = unboxed(model.init(jax.random.key(0), inputs, targets)["params"])

    def loss(p):
        logits = model.apply(
            {"params": p}, inputs, targets, deterministic=False, rngs={"dropout": jax.random.key(2)}
        )
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    value, grads = jax.value_and_grad(loss)(params)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert any(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("norm_position", [pytest.param("post", marks=pytest.mark.slow), "pre"])
def test_remat_gives_the_same_outputs_and_gradients(norm_position):
    """Recomputing each layer in the backward pass changes memory, not numbers: the same
    logits and gradients as without remat, dropout included (its masks are recomputed)."""
    fields = {**TINY.__dict__, "norm_position": norm_position, "dropout_rate": 0.1}
    fields.update(attention_dropout_rate=0.1, relu_dropout_rate=0.1)
    plain, remat = (
        Transformer(TransformerConfig(**fields)),
        Transformer(TransformerConfig(**{**fields, "remat": True})),
    )
    rng = np.random.default_rng(7)
    inputs, targets = random_tokens(rng, (2, 6)), random_tokens(rng, (2, 5))
    params = unboxed(plain.init(jax.random.key(4), inputs, targets)["params"])

    def loss_and_logits(model, p, dropout_key):
        logits = model.apply(
            {"params": p}, inputs, targets, deterministic=False, rngs={"dropout": dropout_key}
        )
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], -1)), logits

    def gradients(model):
        return jax.jit(jax.value_and_grad(functools.partial(loss_and_logits, model), has_aux=True))

    plain_gradients = gradients(plain)
    (loss_a, logits_a), grads_a = plain_gradients(params, jax.random.key(5))
    (loss_b, logits_b), grads_b = gradients(remat)(params, jax.random.key(5))
    np.testing.assert_allclose(np.asarray(logits_b), np.asarray(logits_a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
    flat_a = jax.tree_util.tree_flatten_with_path(grads_a)[0]
    for (path, a), b in zip(flat_a, jax.tree.leaves(grads_b), strict=True):
        np.testing.assert_allclose(
            np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path)
        )
    # The comparison can fail: other dropout masks (another key) move the gradients.
    _, other = plain_gradients(params, jax.random.key(6))
    changed = jax.tree.map(lambda x, y: np.abs(np.asarray(x) - np.asarray(y)).max(), grads_a, other)
    assert max(jax.tree.leaves(changed)) > 1e-3


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_bfloat16_compute_returns_float32_logits_and_finite_gradients():
    cfg = TransformerConfig(**{**TINY.__dict__, "dtype": "bfloat16"})
    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    inputs, targets = random_tokens(rng, (2, 6)), random_tokens(rng, (2, 5))
    params = unboxed(model.init(jax.random.key(0), inputs, targets)["params"])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits = model.apply({"params": params}, inputs, targets)
    assert logits.dtype == jnp.float32
    reference = logits_of(Transformer(TINY), params, inputs, targets)
    assert np.abs(np.asarray(logits) - reference).max() < 0.1  # bfloat16 is close, not equal

    grads = jax.grad(lambda p: model.apply({"params": p}, inputs, targets).sum())(params)
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))


def test_encoder_decoder_attention_weights_are_exposed(tiny):
    model, params = tiny
    rng = np.random.default_rng(0)
    inputs, targets = random_tokens(rng, (1, 6)), random_tokens(rng, (1, 4))
    _, state = model.apply({"params": params}, inputs, targets, mutable=["intermediates"])
    weights = state["intermediates"]["decoder"]["layer_0"]["cross_attention"]
    (cross,) = weights["attention_weights"]
    assert cross.shape == (1, TINY.num_heads, 4, 6)
    np.testing.assert_allclose(np.asarray(cross).sum(-1), 1.0, rtol=1e-5)


def test_unknown_model_key_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown model config key\(s\) \['d_modle'\]"):
        TransformerConfig.from_mapping({"d_modle": 512})
    with pytest.raises(ValueError, match="norm_position"):
        TransformerConfig(norm_position="middle")


def test_attention_implementation_is_checked():
    with pytest.raises(ValueError, match="attention_implementation must be one of"):
        TransformerConfig(attention_implementation="flash")
