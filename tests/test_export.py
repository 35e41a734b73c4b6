"""The CTranslate2 export against our own model, with the real CTranslate2 engine as the judge.

Tiny random models (post-LN and pre-LN, shared or separate embeddings, tied or untied output,
sinusoidal or learned positions): CTranslate2's `score_batch` log-probabilities equal our
teacher-forced ones, greedy decoding gives the same tokens, an export without our position
table does not (the negative control), an int8 export runs, and inputs longer than the
model's positions are refused or truncated as ours are. Then a checkpoint written by train.py,
through the `export.py` command: the user's path (sentencepiece pieces in, pieces out) gives
translate_texts' greedy outputs, and bad input is a one-line error. (The trained default
model against translate.py on its test split: tests/test_export_default.py, slow.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece
from flax import linen as nn

ctranslate2 = pytest.importorskip(
    "ctranslate2", reason="ctranslate2 is not installed (pip install '.[export]')"
)

import exporting  # noqa: E402  (needs ctranslate2)
from data.special_tokens import EOS_ID  # noqa: E402
from decoding import translate_texts, translate_tokens  # noqa: E402
from decoding.settings import DecodeSettings  # noqa: E402
from exporting.converter import FlaxTransformerConverter  # noqa: E402
from model import Transformer, TransformerConfig  # noqa: E402
from tests import train_runner  # noqa: E402
from training import averaging, restoring  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(3, 48)]
MAX_LENGTH = 16
TOLERANCE = 1e-4  # float32, as the issue asks
GREEDY = DecodeSettings(strategy="greedy", beam_size=1)
VARIANTS = {
    "post-LN": {},
    "pre-LN": {"norm_position": "pre"},
    "separate-untied-learned": {
        "share_embeddings": False,
        "tie_output_projection": False,
        "position_embedding": "learned",
    },
}


# ---------------------------------------------------------------- tiny random models


def random_model(variant: str, seed: int = 0) -> tuple[Transformer, dict]:
    """A random model whose head_dim is not d_model / heads (so CTranslate2 must be told),
    its embeddings scaled up for peaked, input-dependent next-token distributions, and EOS's
    output weights doubled so that some outputs end before the length limit."""
    config = TransformerConfig(
        vocab_size=len(VOCAB),
        d_model=16,
        num_heads=2,
        head_dim=4,
        d_ff=32,
        num_encoder_layers=2,
        num_decoder_layers=2,
        max_length=MAX_LENGTH,
        dropout_rate=0.0,
        **VARIANTS[variant],
    )
    model = Transformer(config)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(seed), tokens, tokens)["params"])
    params = jax.tree.map(np.array, params)  # writable copies
    for name in ("source_embedding", "target_embedding"):
        if name in params:
            params[name]["embedding"] *= 3.0
            params[name]["embedding"][EOS_ID] *= 2.0
    if "output_projection" in params["decoder"]:
        params["decoder"]["output_projection"]["kernel"][:, EOS_ID] *= 2.0
    return model, params


def export(model: Transformer, params, directory: Path, converter=FlaxTransformerConverter, **kw):
    converter(model.config, params, VOCAB).convert(str(directory), **kw)
    return ctranslate2.Translator(str(directory))


def random_sentences(rng: np.random.Generator, count: int, max_len: int) -> list[list[int]]:
    return [list(rng.integers(3, len(VOCAB), size=n)) for n in rng.integers(1, max_len, count)]


def pieces(ids: list[int]) -> list[str]:
    return [VOCAB[i] for i in ids]


def padded(rows: list[list[int]]) -> np.ndarray:
    """Rows + EOS, zero-padded to [len(rows), MAX_LENGTH]."""
    array = np.zeros((len(rows), MAX_LENGTH), np.int32)
    for i, row in enumerate(rows):
        array[i, : len(row) + 1] = row + [EOS_ID]
    return array


def our_target_log_probs(model, params, sources, targets) -> list[np.ndarray]:
    """Teacher-forced log p(target[t] | source, target[:t]) for each target + EOS, the
    sources with EOS appended as in training; one padded batch."""
    targets_array = padded(targets)
    logits = jax.jit(model.apply)({"params": params}, padded(sources), targets_array)
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    chosen = np.take_along_axis(log_probs, targets_array[..., None], axis=-1)[..., 0]
    return [chosen[i, : len(target) + 1] for i, target in enumerate(targets)]


def max_score_difference(translator, model, params, sources, targets, **options) -> float:
    results = translator.score_batch(
        [pieces(s) for s in sources], [pieces(t) for t in targets], **options
    )
    ours = our_target_log_probs(model, params, sources, targets)
    return max(
        float(np.max(np.abs(np.asarray(r.log_probs) - o)))
        for r, o in zip(results, ours, strict=True)
    )


def our_greedy(model, params, sources: list[list[int]], max_decode_length: int) -> list[list]:
    """Our greedy outputs (tokens before EOS) for sources given without EOS."""
    outputs = np.asarray(
        translate_tokens(
            model,
            params,
            padded(sources),
            beam_size=1,
            alpha=0.0,
            max_decode_length=max_decode_length,
        )
    )
    return [row[: list(row).index(EOS_ID)] if EOS_ID in row else row for row in outputs.tolist()]


@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_equal_our_teacher_forced_log_probs(variant, tmp_path):
    model, params = random_model(variant)
    translator = export(model, params, tmp_path / "ct2")
    rng = np.random.default_rng(1)
    sources = random_sentences(rng, 8, MAX_LENGTH - 1)
    targets = random_sentences(rng, 8, MAX_LENGTH - 1)
    assert max_score_difference(translator, model, params, sources, targets) <= TOLERANCE


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_decoding_gives_our_tokens(variant, tmp_path):
    model, params = random_model(variant)
    translator = export(model, params, tmp_path / "ct2")
    sources = random_sentences(np.random.default_rng(2), 24, MAX_LENGTH - 1)
    limit = 12
    ours = our_greedy(model, params, sources, limit)
    options = exporting.translate_options(
        VOCAB[0], GREEDY, max_input_length=MAX_LENGTH, max_decoding_length=limit
    )
    results = translator.translate_batch([pieces(s) for s in sources], **options)
    theirs = [[VOCAB.index(piece) for piece in r.hypotheses[0]] for r in results]
    assert theirs == ours
    assert len({tuple(o) for o in ours}) >= 3, "the outputs should depend on the input"
    assert any(len(o) < limit for o in ours) and any(len(o) == limit for o in ours)


def test_without_our_position_table_scores_differ(tmp_path):
    """The negative control: CTranslate2's own sinusoidal table (sin and cos concatenated,
    from position 1) is not ours, and the scores show it."""

    class WithCTranslate2Positions(FlaxTransformerConverter):
        def _load(self):
            spec = super()._load()
            spec.encoder.position_encodings.encodings = "__optional"  # CTranslate2 makes one
            spec.decoder.position_encodings.encodings = "__optional"
            return spec

    model, params = random_model("post-LN")
    translator = export(model, params, tmp_path / "ct2", converter=WithCTranslate2Positions)
    rng = np.random.default_rng(1)
    sources, targets = random_sentences(rng, 8, 12), random_sentences(rng, 8, 12)
    assert max_score_difference(translator, model, params, sources, targets) > 0.05


def test_int8_export_translates(tmp_path):
    """int8 weights (a quarter of float32's bytes) load and translate. How close int8 comes to
    float32 is measured on the Multi30k model in docs/export.md, not on a random model."""
    model, params = random_model("post-LN")
    export(model, params, tmp_path / "float32")
    int8 = export(model, params, tmp_path / "int8", quantization="int8")
    size = {name: (tmp_path / name / "model.bin").stat().st_size for name in ("float32", "int8")}
    assert size["int8"] < 0.6 * size["float32"], size
    sources = [pieces(s) for s in random_sentences(np.random.default_rng(3), 8, 12)]
    options = exporting.translate_options(
        VOCAB[0],
        DecodeSettings(beam_size=2, alpha=1.0),
        max_input_length=MAX_LENGTH,
        max_decoding_length=12,
    )
    outputs = int8.translate_batch(sources, **options)
    assert len(outputs) == len(sources) and all(r.hypotheses[0] for r in outputs)
    scores = int8.score_batch(sources, [r.hypotheses[0] for r in outputs])
    assert all(np.all(np.isfinite(r.log_probs)) for r in scores)


def test_positions_only_up_to_max_length(tmp_path):
    """A source longer than max_length: a clear error by default; with max_input_length it is
    truncated (EOS kept) exactly as translate_texts truncates."""
    model, params = random_model("post-LN")
    translator = export(model, params, tmp_path / "ct2")
    long_source = list(np.random.default_rng(4).integers(3, len(VOCAB), size=MAX_LENGTH + 5))
    with pytest.raises(RuntimeError, match=f"No position encodings .* >= {MAX_LENGTH}"):
        translator.translate_batch([pieces(long_source)])
    truncated = long_source[: MAX_LENGTH - 1]  # + EOS: the model's max_length positions
    target = [5, 6, 7]
    scores = translator.score_batch(
        [pieces(long_source)], [pieces(target)], max_input_length=MAX_LENGTH
    )[0].log_probs
    ours = our_target_log_probs(model, params, [truncated], [target])[0]
    np.testing.assert_allclose(scores, ours, atol=TOLERANCE)


def test_unknown_quantization_and_non_empty_output_are_refused(tmp_path):
    with pytest.raises(exporting.ExportError, match="Unknown quantization 'int4': choose one"):
        exporting.export.check_quantization("int4")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(exporting.ExportError, match="exists and is not empty: pass --force"):
        exporting.export.check_output_dir(tmp_path / "full", force=False)
    exporting.export.check_output_dir(tmp_path / "full", force=True)
    (tmp_path / "empty").mkdir()
    exporting.export.check_output_dir(tmp_path / "empty", force=False)


# ---------------------------------------------------------------- a train.py checkpoint


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint as train.py writes it (config, tokenizer, parameters) whose greedy outputs
    vary with the input: one step of the tiny config, then, as in test_translate.py, the run's
    model initialized at random with its embedding scaled by 4, saved with the run's config and
    tokenizer. Returns the checkpoint's folder."""
    base = tmp_path_factory.mktemp("export_run")
    overrides = {"num_train_steps": 1, "checkpoint_every_steps": 1, "num_sample_translations": 0}
    train_runner.run(base / "run", base / "data", overrides)
    trained = restoring.restore_for_translation(base / "run")
    tokens = jnp.ones((1, 8), jnp.int32)
    params = nn.unbox(trained.model.init(jax.random.key(1), tokens, tokens)["params"])
    params["source_embedding"]["embedding"] *= 4.0
    return averaging.save_average(
        base / "sharp",
        1,
        params,
        trained.config,
        trained.tokenizer.to_bytes(),
        averaged_steps=[1],
        source=base / "run",
    )


def export_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.Popen(
        [sys.executable, str(REPO / "export.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return process.returncode, stdout, stderr


LINES = [
    "one hundred",
    "twenty-two",
    "seven thousand, nine hundred and ninety-four",
    "fifty-six",
    "three",
    " ".join(["nine hundred and ninety-nine thousand"] * 12),  # > 32 subwords: truncated
]


def test_exported_checkpoint_translates_like_translate_texts(sharp_checkpoint, tmp_path):
    """export.py --force replaces a non-empty directory; then the user's path (pieces in,
    pieces out, with export.json's options) gives translate_texts' greedy translations."""
    output = tmp_path / "ct2"
    output.mkdir()
    (output / "old.txt").write_text("replaced")
    code, _, stderr = finish(
        export_cli([f"--checkpoint={sharp_checkpoint}", f"--output={output}", "--force"])
    )
    assert code == 0, stderr[-3000:]
    assert sorted(p.name for p in output.iterdir()) == [
        "config.json",
        "export.json",
        "model.bin",
        "shared_vocabulary.json",
        "spm.model",
    ]

    restored = restoring.restore_for_translation(sharp_checkpoint)
    info = json.loads((output / "export.json").read_text())
    max_input_length = info["translate_options"]["max_input_length"]
    ours = translate_texts(
        restored.model,
        restored.params,
        restored.tokenizer,
        LINES,
        DecodeSettings(
            strategy="greedy",
            beam_size=1,
            max_extra_length=info["decode"]["max_extra_length"],
            batch_size=4,
        ),
        max_input_length=max_input_length,
    )

    sp = sentencepiece.SentencePieceProcessor(model_file=str(output / "spm.model"))
    translator = ctranslate2.Translator(str(output))
    theirs = []
    for line in LINES:  # one sentence per call: its own output length limit, as ours
        pieces = sp.encode(line, out_type=str)
        options = dict(info["translate_options"], beam_size=1)
        options["max_decoding_length"] = exporting.decoding_length(
            [pieces],
            max_extra_length=info["decode"]["max_extra_length"],
            max_input_length=max_input_length,
            max_length=info["max_length"],
        )
        result = translator.translate_batch([pieces], **options)[0]
        theirs.append(sp.decode(result.hypotheses[0]))
    assert theirs == ours
    assert len(set(ours)) >= 3, ours
    # The same through ExportedTranslator, with a blank line. One sentence per batch: this
    # random model never ends a sentence, and CTranslate2's length limit is per batch.
    exported = exporting.ExportedTranslator(output)
    greedy = dataclasses.replace(exported.settings, strategy="greedy", beam_size=1, batch_size=1)
    assert exported.translate(["", *LINES], greedy) == ["", *ours]


def test_bad_input_is_a_one_line_error(sharp_checkpoint, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    checkpoint = f"--checkpoint={sharp_checkpoint}"
    cases = {
        "No checkpoint found at": [f"--workdir={tmp_path / 'empty'}", f"--output={tmp_path}/a"],
        "Unknown quantization 'int4': choose one of int8,": [
            checkpoint,
            f"--output={tmp_path / 'b'}",
            "--quantization=int4",
        ],
        f"{full} exists and is not empty: pass --force": [checkpoint, f"--output={full}"],
        "Pass exactly one of --workdir=DIR or --checkpoint": [f"--output={tmp_path / 'c'}"],
    }
    started = {message: export_cli(args) for message, args in cases.items()}
    for message, process in started.items():
        code, stdout, stderr = finish(process)
        last = stderr.strip().splitlines()[-1]
        assert code == 1, stderr[-2000:]
        assert last.startswith("export.py: error: ") and message in last, stderr[-2000:]
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert not any((tmp_path / name).exists() for name in "abc")
    _, stdout, _ = finish(export_cli(["--help"]))  # absl's --help exits with status 1
    assert "--quantization: Weight type" in stdout and "translate_batch" in stdout
