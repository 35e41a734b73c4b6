"""On a GPU or TPU (`make accelerator-check` runs these; on CPU they skip, saying why).

- the platform's fused attention (cuDNN, splash) equals XLA attention on packed, padded and
  causal batches within bfloat16 tolerance, forward and gradients;
- bfloat16 training tracks float32 training of the default corpus: the logged train loss
  within LOSS_TOLERANCE (relative) from step 100 to 300;
- a checkpoint written on the accelerator restores and translates on CPU;
- cached decoding in bfloat16: each step's logits equal the teacher-forced decoder's within
  bfloat16 tolerance, and beam search runs.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import Transformer, TransformerConfig
from model import fused_attention as fused
from model.attention import dot_product_attention
from model.masks import AttentionSegments
from tests.test_accelerator_attention import packed_segments, paired_segments, random_qkv

REPO = Path(__file__).resolve().parents[1]
BACKEND = jax.default_backend()
FUSED = {"gpu": "cudnn", "tpu": "splash"}.get(BACKEND)
pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.skipif(
        FUSED is None,
        reason=f"needs a GPU or TPU; JAX runs on {BACKEND} (tests/conftest.py sets "
        "JAX_PLATFORMS=cpu unless it is set; `make accelerator-check` sets it)",
    ),
]
LOSS_TOLERANCE = 0.05  # |loss_bf16 - loss_f32| / loss_f32 at each logged step >= 100
TRAIN_STEPS = 300
TIMEOUT_SECONDS = 600


def attention_case(causal: bool, q_len: int, kv_len: int, seed: int):
    rng = np.random.default_rng(seed)
    if q_len == kv_len:
        q_ids = kv_ids = packed_segments(rng, 4, q_len)
    else:
        q_ids, kv_ids = paired_segments(rng, 4, q_len, kv_len)
    q, k, v = (x.astype(jnp.bfloat16) for x in random_qkv(seed, 4, q_len, kv_len, 8, 64))
    return (q, k, v), AttentionSegments(jnp.asarray(q_ids), jnp.asarray(kv_ids), causal)


@pytest.mark.parametrize(
    "causal,q_len,kv_len", [(False, 256, 256), (True, 256, 256), (False, 201, 255)]
)
def test_fused_attention_equals_xla_attention(causal, q_len, kv_len):
    (q, k, v), segments = attention_case(causal, q_len, kv_len, seed=q_len)
    real = segments.query > 0
    cotangent = jax.random.normal(jax.random.key(1), q.shape, jnp.bfloat16)

    def loss(fn, q, k, v):
        return jnp.sum(jnp.where(real[:, :, None, None], fn(q, k, v), 0).astype(jnp.float32)
                       * cotangent.astype(jnp.float32))  # fmt: skip

    fused_fn = lambda q, k, v: fused.fused_attention(q, k, v, segments, FUSED)
    # The reference computes in float32 from the same bfloat16 inputs.
    xla_fn = lambda q, k, v: dot_product_attention(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), segments.dense()
    )[0]
    got, want = jax.jit(fused_fn)(q, k, v), jax.jit(xla_fn)(q, k, v)
    np.testing.assert_allclose(
        np.asarray(got, np.float32)[np.asarray(real)], np.asarray(want)[np.asarray(real)],
        atol=2e-2, rtol=2e-2,
    )  # fmt: skip
    grads = jax.jit(jax.grad(functools.partial(loss, fused_fn), argnums=(0, 1, 2)))(q, k, v)
    wants = jax.jit(jax.grad(functools.partial(loss, xla_fn), argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(grads, wants, strict=True):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.abs(g - w).max() <= 2e-2 * np.abs(w).max() + 1e-3


def train(workdir: Path, dtype: str, prepared: Path) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("XLA_FLAGS", None)
    command = [
        sys.executable, str(REPO / "train.py"), "--config=configs/default.py",
        f"--workdir={workdir}", f"--config.data.prepared_dir={prepared}",
        f"--config.num_train_steps={TRAIN_STEPS}", "--config.log_every_steps=50",
        "--config.eval_every_steps=0", "--config.num_bleu_examples=0",
        f"--config.model.dtype={dtype}", "--config.model.attention_implementation=auto",
        f"--config.checkpoint_every_steps={TRAIN_STEPS}",
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The default config trained TRAIN_STEPS steps in float32 and in bfloat16 (same seed)."""
    root = tmp_path_factory.mktemp("accelerator_runs")
    workdirs = {}
    for dtype in ("float32", "bfloat16"):
        workdirs[dtype] = root / dtype
        done = train(workdirs[dtype], dtype, root / "data")
        assert done.returncode == 0, done.stderr[-3000:]
        if dtype == "bfloat16":
            assert f"Attention: {FUSED}" in done.stderr, "the fused kernel was not chosen"
    return workdirs


def logged_losses(workdir: Path) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def test_bfloat16_training_tracks_float32(runs):
    f32, bf16 = logged_losses(runs["float32"]), logged_losses(runs["bfloat16"])
    steps = [step for step in sorted(f32) if step >= 100]
    assert steps and steps[-1] == TRAIN_STEPS
    gaps = {step: abs(bf16[step] - f32[step]) / f32[step] for step in steps}
    assert max(gaps.values()) <= LOSS_TOLERANCE, f"relative loss gaps by step: {gaps}"
    assert f32[steps[-1]] < f32[steps[0]]  # it did learn


def test_checkpoint_from_the_accelerator_translates_on_cpu(runs, tmp_path):
    sentences = tmp_path / "input.txt"
    sentences.write_text("one hundred and twelve\nfour thousand\nseventy-seven\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "translate.py"), f"--workdir={runs['bfloat16']}",
         f"--input={sentences}", "--beam_size=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.strip() for line in lines), done.stdout


def test_cached_decoding_runs_in_bfloat16():
    from decoding import translate_tokens

    config = TransformerConfig(
        vocab_size=1000, d_model=256, num_heads=4, head_dim=64, d_ff=1024,
        num_encoder_layers=2, num_decoder_layers=2, max_length=64, dtype="bfloat16",
        attention_implementation=FUSED,
    )  # fmt: skip
    model = Transformer(config)
    rng = np.random.default_rng(0)
    inputs = rng.integers(3, 1000, (4, 23)).astype(np.int32)
    targets = rng.integers(3, 1000, (4, 17)).astype(np.int32)
    params = model.init(jax.random.key(0), inputs, targets)["params"]
    teacher_forced = model.apply({"params": params}, inputs, targets)  # [4, 17, vocab]

    encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
    cache = model.apply({"params": params}, encoded, 17, 4, method=Transformer.init_cache)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(cache["layers"]))
    step = jax.jit(lambda token, cache: model.apply(
        {"params": params}, token, inputs, cache, method=Transformer.decode_step))  # fmt: skip
    previous = np.zeros((4, 1), np.int32)
    for t in range(17):
        logits, cache = step(previous, cache)
        want = np.asarray(teacher_forced[:, t], np.float32)
        scale = np.abs(want).max()
        assert np.abs(np.asarray(logits, np.float32) - want).max() <= 0.05 * scale + 0.05, t
        previous = targets[:, t : t + 1]
    outputs = np.asarray(
        translate_tokens(model, params, inputs, beam_size=4, alpha=0.6, max_decode_length=30)
    )
    assert outputs.shape == (4, 30) and ((outputs >= 0) & (outputs < 1000)).all()
