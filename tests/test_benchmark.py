"""The benchmark: its FLOPs formula against two independent counts, its peak table, its
synthetic batches, and the command end to end on a tiny config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from benchmarking import flops, peak, report
from benchmarking.synthetic import packed_batch
from model import Transformer, TransformerConfig

REPO = Path(__file__).resolve().parents[1]

# Small, but with every kind of matmul, unequal source and target lengths, and unequal
# d_model and heads x head_dim, so that a wrong term in the formula cannot hide.
SMALL = TransformerConfig(
    vocab_size=300,
    d_model=48,
    num_heads=4,
    head_dim=16,
    d_ff=96,
    num_encoder_layers=2,
    num_decoder_layers=3,
    max_length=32,
    dropout_rate=0.0,
)
BATCH, SOURCE_LENGTH, TARGET_LENGTH = 3, 12, 7


def dot_flops(jaxpr: jax.extend.core.Jaxpr) -> int:
    """2 x (output elements) x (contracted size) summed over every dot_general of a jaxpr,
    including the jaxprs nested in its equations (jit, custom_vjp, remat...)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = int(np.prod([lhs_shape[i] for i in lhs_contracting]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    total += dot_flops(inner)
    return total


@pytest.fixture(scope="module")
def small_forward():
    rng = np.random.default_rng(0)
    inputs = jnp.asarray(rng.integers(2, SMALL.vocab_size, (BATCH, SOURCE_LENGTH)), jnp.int32)
    targets = jnp.asarray(rng.integers(2, SMALL.vocab_size, (BATCH, TARGET_LENGTH)), jnp.int32)
    model = Transformer(SMALL)
    params = nn.unbox(model.init(jax.random.key(0), inputs, targets)["params"])

    def forward(p):
        return model.apply({"params": p}, inputs, targets)

    def loss(p):
        log_probs = jax.nn.log_softmax(forward(p))
        return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], -1))

    return forward, loss, params


def test_forward_flops_equal_the_traced_matmuls(small_forward):
    forward, _, params = small_forward
    counted = dot_flops(jax.make_jaxpr(forward)(params).jaxpr)
    formula = flops.forward_flops(SMALL, BATCH, SOURCE_LENGTH, TARGET_LENGTH)
    assert formula.total == counted


def test_training_flops_are_three_forward_passes(small_forward):
    _, loss, params = small_forward
    counted = dot_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert flops.train_step_flops(SMALL, BATCH, SOURCE_LENGTH, TARGET_LENGTH) == counted


def test_forward_flops_match_xla_cost_analysis(small_forward):
    """XLA's own count of the compiled program. It also counts elementwise work (LayerNorm,
    softmax, masks, ReLU, about one FLOP per element and operation), which the formula leaves
    out, so it is at least the formula and, for this model, under 6% above it."""
    forward, _, params = small_forward
    cost = jax.jit(forward).lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    formula = flops.forward_flops(SMALL, BATCH, SOURCE_LENGTH, TARGET_LENGTH).total
    assert formula <= cost["flops"] <= 1.06 * formula


def test_base_formula_by_hand():
    """Paper base at 8 x 64 (a = d, d_ff = 4d, S = T = L), per token: encoder layer
    8d² (Q,K,V,O) + 16d² (feed-forward) + 4Ld (attention); decoder layer 8d² (self) + 8d²
    (cross Q,O and the K,V of one source token) + 16d² + 8Ld; output layer 2dV."""
    config = TransformerConfig()  # the paper's base
    d, v, n, length, tokens = 512, 37000, 6, 64, 8 * 64
    encoder = n * tokens * (24 * d * d + 4 * length * d)
    decoder = n * tokens * (32 * d * d + 8 * length * d)
    output = tokens * 2 * d * v
    assert flops.forward_flops(config, 8, length, length).total == encoder + decoder + output


@pytest.mark.parametrize(
    "device_kind, expected",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("cpu", None),
        ("Tesla T4", None),
    ],
)
def test_peak_table(device_kind, expected):
    assert peak.spec_peak(device_kind) == expected


def test_synthetic_batches_are_packed_with_the_requested_fill():
    rng = np.random.default_rng(0)
    batch = packed_batch(
        rng, batch_size=5, length=40, vocab_size=50, fill_rate=0.75, mean_example_length=8
    )
    for side in ("inputs", "targets"):
        tokens = batch[side]
        segments = batch[f"{side}_segment_ids"]
        positions = batch[f"{side}_positions"]
        assert tokens.shape == (5, 40) and tokens.dtype == np.int32
        assert ((tokens > 0).sum(axis=1) == 30).all()  # 0.75 x 40 real tokens in every row
        assert ((tokens > 0) == (segments > 0)).all()
        assert (tokens[tokens > 0] >= 2).all() and tokens.max() < 50
        for row_segments, row_positions in zip(segments, positions, strict=True):
            for segment in np.unique(row_segments[row_segments > 0]):
                where = np.flatnonzero(row_segments == segment)
                assert (np.diff(where) == 1).all()  # contiguous
                assert (row_positions[where] == np.arange(len(where))).all()
            assert (row_positions[row_segments == 0] == 0).all()
    assert len(np.unique(batch["targets_segment_ids"])) > 2  # several examples per row
    with pytest.raises(ValueError, match="fill_rate"):
        packed_batch(rng, 1, 8, 50, fill_rate=1.5)


def test_markdown_table_shows_present_figures_only():
    table = report.markdown_table({"step_time_s": 0.25, "mfu": 0.5, "peak_flops": 2e11})
    assert "| train step time, median | 0.250 s |" in table
    assert "| MFU (model FLOPs utilisation) | 50.0% |" in table
    assert "200.00 GFLOP/s" in table
    assert "memory" not in table


def run_benchmark(tmp_path, *flags, devices=1):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    return subprocess.run(
        [sys.executable, "benchmark.py", "--config=tests/train_tiny_config.py", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_command_writes_the_figures(tmp_path):
    out = tmp_path / "bench.json"
    result = run_benchmark(
        tmp_path,
        "--steps=2",
        "--warmup_steps=0",
        "--batch_size=4",
        "--length=16",
        "--fill_rate=0.5",
        "--decode_batch_size=2",
        "--decode_repeats=1",
        f"--json={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| MFU (model FLOPs utilisation) |" in result.stdout
    figures = json.loads(out.read_text())
    for key in (
        "step_time_s",
        "tokens_per_s",
        "nonpad_tokens_per_s",
        "model_flops_per_step",
        "peak_flops",
        "mfu",
        "compile_s",
        "decode_greedy_tokens_per_s",
        "decode_greedy_sentences_per_s",
        "decode_beam4_tokens_per_s",
        "decode_beam4_sentences_per_s",
    ):
        assert figures[key] > 0, key
    assert figures["fill_rate"] == 0.5
    assert figures["tokens_per_s"] == pytest.approx(4 * 16 / figures["step_time_s"])
    assert figures["nonpad_tokens_per_s"] == pytest.approx(figures["tokens_per_s"] / 2)
    assert figures["mfu"] == pytest.approx(
        figures["model_flops_per_step"] / figures["step_time_s"] / figures["peak_flops"]
    )
    assert figures["step_time_min_s"] <= figures["step_time_s"] <= figures["step_time_max_s"]


def test_batch_not_divisible_by_the_mesh_is_a_one_line_error(tmp_path):
    result = run_benchmark(tmp_path, "--batch_size=3", "--length=16", "--nodecode", devices=2)
    assert result.returncode != 0
    assert "batch_size=3 must be divisible by the 2 batch shards" in result.stderr
    assert "Traceback" not in result.stderr
