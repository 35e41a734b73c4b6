"""Decoding speed against CTranslate2, both timed side by side in one process on the same weights;
prints JSON (docs/decoding_speed.md).

    python scripts/decode_speed.py [--config=configs/multi30k.py] [--beam_sizes=4,1]
    python scripts/decode_speed.py --workdir=/work/runs/multi30k [--split=test_2016_flickr]

Without --workdir: a randomly initialised model of the config's size (post-LN, d_model 256, 3+3
layers, d_ff 1024, vocabulary 8000 for configs/multi30k.py) decodes --batch_size random source
sentences of --source_length tokens (EOS included), with EOS made impossible so that every
search runs exactly --output_length steps: ours through `decoding.translate_tokens` (EOS logit
set to -inf), CTranslate2 with min_decoding_length = max_decoding_length = --output_length.
Both see the same weights: CTranslate2 loads them through our exporter (exporting/converter.py),
float32, --threads intra-op threads (and --inter_threads batches at once). The greedy outputs
of the two are compared token by token (`greedy_same_tokens`), a check that the two compute the
same model.

With --workdir: the real path. Ours is `decoding.translate_texts` (what translate.py calls, with
the checkpoint's config.decode unless --beam_sizes/--alpha/--early_stopping say otherwise) on
every line of a Multi30k split; CTranslate2 translates the same lines, tokenized with the same
sentencepiece model, from its export of the checkpoint, in batches of the same size and with
the longest allowed output (longest input + max_extra_length); both include tokenization and
detokenization. sacreBLEU of both outputs is printed too. CTranslate2's length penalty is
score / length^alpha, ours GNMT's ((5 + length) / 6)^alpha, and CTranslate2 always stops a
sentence once a step's best hypothesis ends (ours stops early only with --early_stopping; by
default it stops when nothing can still change the result), so outputs may differ slightly.

With --devices=N, ours splits the CPU into N JAX devices and every batch's rows over them, each
device decoding its rows alone (translate.py's --devices; its default on a CPU is 2). The
matching CTranslate2 setup is --inter_threads=N --threads=1: N batches at once, one thread each.

Every function is compiled and run once first; then all are timed round-robin --repeats times,
so that load from other processes falls on all alike. Medians (and ranges) are printed; the
figure that counts is the ratio ours / CTranslate2 (`ours_over_ctranslate2`, < 1 = we are
faster); `ours_over_ctranslate2_cpu` is the same for CPU seconds of the process, a check when
other processes load the machine (threads that spin-wait count there too). The 1-minute load
average before and after goes into the JSON.
"""

import dataclasses
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ctranslate2
import jax
import jax.numpy as jnp
import numpy as np
import sacrebleu
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from decoding import EOS_ID, translate_texts, translate_tokens  # noqa: E402
from decoding.settings import DecodeSettings  # noqa: E402
from decoding.settings import max_input_length as longest_input  # noqa: E402
from decoding.translator import encode_texts  # noqa: E402
from exporting.converter import FlaxTransformerConverter  # noqa: E402
from exporting.export import vocabulary  # noqa: E402
from model import Transformer, TransformerConfig  # noqa: E402
from training import configuration, partitioning, restoring  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(ROOT / "configs/multi30k.py"), "Config whose model size is timed (no --workdir)."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A training run: time the real path on its newest checkpoint instead."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", str(ROOT.parent / "shared/data/multi30k"), "Multi30k files (with --workdir)."
)
_SPLIT = flags.DEFINE_string("split", "test_2016_flickr", "Multi30k split (with --workdir).")
_LANGUAGES = flags.DEFINE_list("languages", ["en", "de"], "Source and target language.")
_NUM_SENTENCES = flags.DEFINE_integer(
    "num_sentences", None, "Only the first N lines of the split (with --workdir; default all)."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Sentences decoded at once (default 32; with --workdir config.decode)."
)
_SOURCE_LENGTH = flags.DEFINE_integer("source_length", 20, "Source tokens, EOS included.")
_OUTPUT_LENGTH = flags.DEFINE_integer("output_length", 39, "Output tokens per sentence.")
_BEAM_SIZES = flags.DEFINE_list(
    "beam_sizes", None, "Beam sizes timed; 1 = greedy (default 4,1; with --workdir config.decode)."
)
_ALPHA = flags.DEFINE_float("alpha", None, "Length penalty (default 0.6 or config.decode).")
_EARLY_STOPPING = flags.DEFINE_bool(
    "early_stopping",
    None,
    "Ours with --workdir: beam search stops a sentence once its best finished hypothesis "
    "beats its best alive one ended within the next 3 steps (default: "
    "config.decode.early_stopping).",
)
_THREADS = flags.DEFINE_integer("threads", 2, "CTranslate2 intra-op threads.")
_INTER_THREADS = flags.DEFINE_integer(
    "inter_threads", 1, "CTranslate2 batches decoded at once (with --workdir), each on --threads."
)
_DEVICES = flags.DEFINE_integer(
    "devices", 1, "Ours: CPU devices the rows of each batch are split over (translate.py's)."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs of each function (median printed).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the JSON to this file.")


class NeverEnds(Transformer):
    """The same network with EOS impossible, so every search runs to the full length."""

    def decode_step(self, token, inputs, cache):
        logits, cache = super().decode_step(token, inputs, cache)
        return logits.at[:, EOS_ID].set(-jnp.inf), cache


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Runs every function once (compiling), then all round-robin `repeats` times.
    -> {name: {first_s, median_s, min_s, max_s, cpu_median_s}}: wall-clock seconds, and the CPU
    seconds of this process (all threads) per call, which other processes' load inflates less."""
    first, runs, cpu = {}, {name: [] for name in fns}, {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            runs[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return {
        name: {
            "first_s": round(first[name], 4),
            "median_s": round(statistics.median(runs[name]), 4),
            "min_s": round(min(runs[name]), 4),
            "max_s": round(max(runs[name]), 4),
            "cpu_median_s": round(statistics.median(cpu[name]), 4),
        }
        for name in fns
    }


def ctranslate2_translator(
    config: TransformerConfig, params, pieces: list[str], directory: str
) -> ctranslate2.Translator:
    """Our parameters exported to CTranslate2 (float32) and loaded on the CPU."""
    FlaxTransformerConverter(config, params, pieces).convert(directory, force=True)
    return ctranslate2.Translator(
        directory,
        device="cpu",
        compute_type="float32",
        inter_threads=_INTER_THREADS.value,
        intra_threads=_THREADS.value,
    )


def comparisons(timings: dict[str, dict], names: list[str]) -> dict[str, dict]:
    """{name: {ours, ctranslate2, ours_over_ctranslate2}} from timings 'ours_NAME' and
    'ctranslate2_NAME'."""
    result = {}
    for name in names:
        ours, theirs = timings[f"ours_{name}"], timings[f"ctranslate2_{name}"]
        result[name] = {
            "ours": ours,
            "ctranslate2": theirs,
            "ours_over_ctranslate2": round(ours["median_s"] / theirs["median_s"], 3),
            "ours_over_ctranslate2_cpu": round(ours["cpu_median_s"] / theirs["cpu_median_s"], 3),
        }
    return result


def synthetic() -> dict:
    """Random weights at the config's size, the issue's shapes."""
    batch = _BATCH_SIZE.value or 32
    source_length, length = _SOURCE_LENGTH.value, _OUTPUT_LENGTH.value
    beam_sizes = [int(b) for b in (_BEAM_SIZES.value or ["4", "1"])]
    alpha = 0.6 if _ALPHA.value is None else _ALPHA.value
    model_config = configuration.model_config(_CONFIG.value)
    if max(length, source_length) > model_config.max_length:
        raise app.UsageError(
            f"Lengths must be <= the model's max_length {model_config.max_length}."
        )
    model = NeverEnds(model_config)
    rng = np.random.default_rng(0)
    inputs = rng.integers(3, model_config.vocab_size, (batch, source_length)).astype(np.int32)
    inputs[:, -1] = EOS_ID
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), inputs[:1], inputs[:1])["params"])
    pieces = ["<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(3, model_config.vocab_size)]
    source_pieces = [[pieces[i] for i in row[:-1]] for row in inputs]  # CTranslate2 adds EOS

    with tempfile.TemporaryDirectory() as directory:
        translator = ctranslate2_translator(model_config, params, pieces, directory)
        fns = {}
        for beam in beam_sizes:
            name = "greedy" if beam == 1 else f"beam{beam}"
            fns[f"ours_{name}"] = lambda beam=beam: np.asarray(
                translate_tokens(
                    model, params, inputs, beam_size=beam, alpha=alpha, max_decode_length=length
                )
            )
            fns[f"ctranslate2_{name}"] = lambda beam=beam: translator.translate_batch(
                source_pieces,
                beam_size=beam,
                length_penalty=alpha,
                max_decoding_length=length,
                min_decoding_length=length,
            )
        outputs = {name: fn() for name, fn in fns.items()}
        timings = time_interleaved(fns, _REPEATS.value)

    checks = {}
    for name in [n.removeprefix("ours_") for n in fns if n.startswith("ours_")]:
        theirs = [result.hypotheses[0] for result in outputs[f"ctranslate2_{name}"]]
        checks[f"{name}_output_tokens"] = {
            "ours": int(np.count_nonzero(outputs[f"ours_{name}"])),
            "ctranslate2": sum(len(tokens) for tokens in theirs),
        }
        if name == "greedy":
            ids = np.asarray([[pieces.index(p) for p in tokens] for tokens in theirs])
            checks["greedy_same_tokens"] = float(np.mean(ids == outputs["ours_greedy"]))
    names = [n.removeprefix("ours_") for n in fns if n.startswith("ours_")]
    return {
        "setup": {
            "weights": f"random, {model_config}",
            "batch_size": batch,
            "source_length": source_length,
            "output_length": length,
            "alpha": alpha,
        },
        "results": comparisons(timings, names),
        "checks": checks,
    }


def read_lines(split: str, language: str) -> list[str]:
    with gzip.open(Path(_DATA_DIR.value) / f"{split}.{language}.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def real_path() -> dict:
    """The newest checkpoint of --workdir on a Multi30k split: translate_texts vs CTranslate2."""
    devices = jax.devices()[: _DEVICES.value]
    mesh = partitioning.make_mesh((len(devices), 1, 1), devices) if len(devices) > 1 else None
    restored = restoring.restore_for_translation(_WORKDIR.value, mesh=mesh)
    configured = DecodeSettings.from_config(
        restored.config.decode,
        alpha=_ALPHA.value,
        batch_size=_BATCH_SIZE.value,
        early_stopping=_EARLY_STOPPING.value,
    )
    rows = None
    if mesh is not None:  # as translate.py decodes on --devices
        batch_size, rows = partitioning.decoding_rows(mesh, configured.batch_size)
        configured = dataclasses.replace(configured, batch_size=batch_size)
    beam_sizes = [int(b) for b in (_BEAM_SIZES.value or [str(configured.beam_size)])]
    alpha, batch = configured.alpha, configured.batch_size
    max_extra_length = configured.max_extra_length
    max_input_length = longest_input(restored.config)
    source_language, target_language = _LANGUAGES.value
    sources = read_lines(_SPLIT.value, source_language)[: _NUM_SENTENCES.value]
    references = read_lines(_SPLIT.value, target_language)[: _NUM_SENTENCES.value]
    pieces = vocabulary(restored)
    piece_ids = {piece: i for i, piece in enumerate(pieces)}
    tokenizer = restored.tokenizer

    def ctranslate2_texts(translator, beam: int) -> list[str]:
        ids, _ = encode_texts(tokenizer, sources, max_input_length)  # as translate_texts
        results = translator.translate_batch(
            [[pieces[i] for i in row[:-1]] for row in ids],  # CTranslate2 adds EOS
            max_batch_size=batch,
            beam_size=beam,
            length_penalty=alpha,
            max_decoding_length=max(map(len, ids)) + 1 + max_extra_length,
        )
        return [tokenizer.decode([piece_ids[p] for p in r.hypotheses[0]]) for r in results]

    with tempfile.TemporaryDirectory() as directory:
        translator = ctranslate2_translator(
            restored.model.config, restored.params, pieces, directory
        )
        fns = {}
        for beam in beam_sizes:
            name = "greedy" if beam == 1 else f"beam{beam}"
            decode = dataclasses.replace(
                configured, strategy="greedy" if beam == 1 else "beam", beam_size=beam
            )
            fns[f"ours_{name}"] = lambda decode=decode: translate_texts(
                restored.model,
                restored.params,
                tokenizer,
                sources,
                decode,
                max_input_length,
                rows=rows,
            )
            fns[f"ctranslate2_{name}"] = lambda beam=beam: ctranslate2_texts(translator, beam)
        outputs = {name: fn() for name, fn in fns.items()}
        timings = time_interleaved(fns, _REPEATS.value)

    names = [n.removeprefix("ours_") for n in fns if n.startswith("ours_")]
    results = comparisons(timings, names)
    for name in names:
        for side in ("ours", "ctranslate2"):
            results[name][side]["sentences_per_s"] = round(
                len(sources) / results[name][side]["median_s"], 1
            )
            results[name][side]["bleu"] = round(
                sacrebleu.corpus_bleu(outputs[f"{side}_{name}"], [references]).score, 2
            )
    return {
        "setup": {
            "checkpoint": f"{restored.checkpoints_dir} step {restored.steps[-1]}",
            "split": _SPLIT.value,
            "sentences": len(sources),
            "batch_size": batch,
            "alpha": alpha,
            "max_extra_length": max_extra_length,
            "early_stopping": configured.early_stopping,
            "ours_devices": _DEVICES.value,
        },
        "results": results,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _DEVICES.value < 1 or (_DEVICES.value > 1 and not _WORKDIR.value):
        raise app.UsageError("--devices takes 1, or more with --workdir (the real path).")
    if _DEVICES.value > 1:
        jax.config.update("jax_num_cpu_devices", _DEVICES.value)  # before JAX starts
    load_before = os.getloadavg()[0]
    report = real_path() if _WORKDIR.value else synthetic()
    report = {
        **report,
        "ctranslate2": (
            f"{ctranslate2.__version__}, float32, {_INTER_THREADS.value} batch(es) at once x "
            f"{_THREADS.value} thread(s)"
        ),
        "repeats": _REPEATS.value,
        "cpus": os.cpu_count(),
        "load_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if _OUTPUT.value:
        Path(_OUTPUT.value).write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)
