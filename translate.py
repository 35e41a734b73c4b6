"""Translate text with a trained checkpoint, and score it against references.

    python translate.py --workdir=runs/default < input.en > output.de
    python translate.py --checkpoint=runs/default/checkpoints/3000 --input=test.en \\
        --output=test.de --reference=test.de.ref [--tokenized_lowercase]
    python translate.py --workdir=runs/base --average_last=5 --save_average=runs/base-avg5 ...
    echo "one hundred and five" | python translate.py --workdir=runs/default \\
        --attention_plot=attention.png

N lines in give N lines out (a blank line gives an empty line). Translations go to standard
output or --output; progress and speed go to standard error, and so do the scores unless
--output is given (then they go to standard output).
Decoding settings default to the checkpoint's config.decode. Only the parameters are restored,
onto this host's first device, copied to --devices local devices (on a CPU, by default 2: the
CPU split into two JAX devices, each decoding half of every batch), or sharded over all local
devices with --mesh_shape.
"""

from __future__ import annotations

from training.host_memory import use_huge_pages

if __name__ == "__main__":
    use_huge_pages()  # before JAX loads: may re-execute this program (training/host_memory.py)

import contextlib
import dataclasses
import io
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import jax
from absl import app, flags, logging
from jax.sharding import Mesh, Sharding
from ml_collections import config_flags
from tqdm import tqdm

from decoding import (
    attention_plot,
    keep_compiled_decoders,
    line_translation,
    scoring,
    translate_texts,
)
from decoding.settings import STRATEGIES, DecodeSettings, DecodeSettingsError, max_input_length
from training import averaging, partitioning, restoring
from training.errors import ConfigError

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training run directory: its newest checkpoint is used."
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "One checkpoint folder, WORKDIR/checkpoints/<step> (instead of --workdir)."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Optional config file to use instead of the config saved with the checkpoint (fields can be "
    "overridden with --config.FIELD=VALUE, e.g. --config.model.dtype=bfloat16). The "
    "checkpoint's parameter shapes must fit it.",
)
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "sentencepiece model file to use instead of the checkpoint's tokenizer."
)
_INPUT = flags.DEFINE_string(
    "input", None, "Input text file, one sentence per line (default: stdin)."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output file, one line per input line (default: stdout)."
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    None,
    STRATEGIES,
    "Search: 'beam' or 'greedy' (default: greedy if the beam size is 1, else beam).",
)
_BEAM_SIZE = flags.DEFINE_integer(
    "beam_size", None, "Beam size; 1 = greedy search (default: the checkpoint's config.decode)."
)
_ALPHA = flags.DEFINE_float(
    "alpha", None, "GNMT length penalty exponent alpha (default: config.decode.alpha)."
)
_MAX_EXTRA_LENGTH = flags.DEFINE_integer(
    "max_extra_length",
    None,
    "Outputs are at most input length + this many subwords (default: config.decode).",
)
_EARLY_STOPPING = flags.DEFINE_bool(
    "early_stopping",
    None,
    "Beam search: stop a sentence once its best finished hypothesis beats its best alive one "
    "ended within the next 3 steps; faster, not exact (default: config.decode.early_stopping, else "
    "off).",
)
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Keep compiled decoders in this folder (JAX's persistent compilation cache): a later run "
    "with the same model and settings skips most of the compilation. Default: "
    "$XDG_CACHE_HOME/flax-transformer-mt/compiled-decoders (~/.cache when unset); empty: none.",
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Sentences decoded together (default: config.decode.batch_size)."
)
_REFERENCE = flags.DEFINE_string(
    "reference",
    None,
    "Reference translations, one line per input line: print sacreBLEU BLEU (cased, 13a) and "
    "chrF with their signatures.",
)
_TOKENIZED_LOWERCASE = flags.DEFINE_bool(
    "tokenized_lowercase",
    False,
    "With --reference, also print the lowercased 13a-tokenized BLEU (sacrebleu -lc -tok 13a).",
)
_AVERAGE_LAST = flags.DEFINE_integer(
    "average_last",
    1,
    "Decode with the mean parameters of the last N checkpoints up to the chosen one "
    "(paper: 5 for base, 20 for big).",
)
_SAVE_AVERAGE = flags.DEFINE_string(
    "save_average",
    None,
    "Also write the averaged checkpoint to this new directory (readable with --workdir=DIR).",
)
_ATTENTION_PLOT = flags.DEFINE_string(
    "attention_plot",
    None,
    "With exactly one input sentence: draw its encoder-decoder attention (source x target "
    "subwords, mean over heads, one panel per decoder layer) to this PNG file.",
)
_MESH_SHAPE = flags.DEFINE_list(
    "mesh_shape",
    None,
    "Shard the parameters over the local devices as (data, fsdp, tensor), e.g. 1,1,-1 "
    "(default: see --devices).",
)
_DEVICES = flags.DEFINE_integer(
    "devices",
    None,
    "Decode on this many local devices, each with all the parameters and its share of every "
    "batch's rows (on a CPU: the CPU split into that many JAX devices). Default: 2 on a CPU "
    "(1 on a 1-core machine), 1 on an accelerator. Not with --mesh_shape.",
)
_PROGRESS = flags.DEFINE_bool(
    "progress", True, "Show a progress bar on stderr when it is a terminal (--noprogress: never)."
)

CPU_DEVICES = min(2, os.cpu_count() or 1)  # --devices' default on a CPU (docs/translate.md)
CHUNK_BATCHES = 8  # lines read, sorted by length and translated at a time: this many batches


def fail(message: str) -> NoReturn:
    """Ends the program with a one-line error (exit status 1)."""
    sys.exit(f"translate.py: error: {message}")


def check_flags() -> None:
    if (_WORKDIR.value is None) == (_CHECKPOINT.value is None):
        fail("Pass exactly one of --workdir=DIR or --checkpoint=DIR/checkpoints/STEP.")
    decode_settings({})  # the decoding flags' ranges, before anything is restored
    if _TOKENIZED_LOWERCASE.value and _REFERENCE.value is None:
        fail("--tokenized_lowercase needs --reference=FILE.")
    if _DEVICES.value is not None and _DEVICES.value < 1:
        fail(f"--devices must be at least 1, got {_DEVICES.value}.")
    if _DEVICES.value is not None and _MESH_SHAPE.value:
        fail("Pass --devices or --mesh_shape, not both: the mesh says which devices decode.")


def split_the_cpu() -> None:
    """Before JAX starts: a CPU becomes --devices JAX devices (default CPU_DEVICES), unless
    --mesh_shape lays out the devices that XLA_FLAGS gives."""
    if not _MESH_SHAPE.value:
        jax.config.update("jax_num_cpu_devices", _DEVICES.value or CPU_DEVICES)


def decoding_mesh() -> Mesh | None:
    """The mesh of --mesh_shape, or of --devices copies of the parameters; None: one device."""
    devices = jax.local_devices()
    if _MESH_SHAPE.value:
        try:
            shape = [int(size) for size in _MESH_SHAPE.value]
        except ValueError:
            fail(f"--mesh_shape takes integers, e.g. 1,1,-1; got {_MESH_SHAPE.value}.")
        return partitioning.make_mesh(shape, devices)
    count = _DEVICES.value or (CPU_DEVICES if devices[0].platform == "cpu" else 1)
    if count > len(devices):
        fail(f"--devices={count}, but this host has {len(devices)} {devices[0].platform} devices.")
    return partitioning.make_mesh((count, 1, 1), devices[:count]) if count > 1 else None


def restore(mesh: Mesh | None) -> restoring.Restored:
    """The model from --workdir/--checkpoint, averaged if asked, on one device or the mesh."""
    restored = restoring.restore_for_translation(
        _WORKDIR.value or _CHECKPOINT.value,
        average_last=_AVERAGE_LAST.value,
        config=_CONFIG.value,
        tokenizer_file=_TOKENIZER.value,
        mesh=mesh,
    )
    steps = restored.steps
    which = f"step {steps[-1]}" if len(steps) == 1 else f"the mean of steps {steps}"
    print(f"Restored {which} from {restored.checkpoints_dir}.", file=sys.stderr)
    if _SAVE_AVERAGE.value:
        saved = averaging.save_average(
            _SAVE_AVERAGE.value,
            steps[-1],
            restored.params,
            restored.config,
            restored.tokenizer.to_bytes(),
            steps,
            source=restored.checkpoints_dir,
        )
        print(f"Saved the averaged checkpoint to {saved}.", file=sys.stderr)
    return restored


def decode_settings(decode_config: Any) -> DecodeSettings:
    """The decoding flags, else the checkpoint's config.decode; a bad value ends the program."""
    try:
        return DecodeSettings.from_config(
            decode_config,
            strategy=_STRATEGY.value,
            beam_size=_BEAM_SIZE.value,
            alpha=_ALPHA.value,
            max_extra_length=_MAX_EXTRA_LENGTH.value,
            batch_size=_BATCH_SIZE.value,
            early_stopping=_EARLY_STOPPING.value,
        )
    except DecodeSettingsError as error:
        flag_names = (
            "--strategy, --beam_size, --alpha, --max_extra_length, --batch_size, --early_stopping"
        )
        fail(f"{str(error).rstrip('.')} (decoding flags: {flag_names}).")


def read_reference(input_lines: int | None) -> list[str] | None:
    """The --reference lines, checked against the input's line count when known."""
    if _REFERENCE.value is None:
        return None
    with open(_REFERENCE.value, "rb") as file:
        references = line_translation.read_lines(file, _REFERENCE.value)
    if input_lines is not None and len(references) != input_lines:
        fail(
            f"The reference {_REFERENCE.value} has {len(references)} lines but the input has "
            f"{input_lines}: give one reference line per input line."
        )
    return references


@contextlib.contextmanager
def open_streams():
    """(binary input, UTF-8 text output): --input/--output files, or stdin/stdout."""
    with contextlib.ExitStack() as stack:
        stdin = sys.stdin.buffer
        source = stack.enter_context(open(_INPUT.value, "rb")) if _INPUT.value else stdin
        if _OUTPUT.value:
            sink = stack.enter_context(open(_OUTPUT.value, "w", encoding="utf-8", newline="\n"))
        else:
            sink = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
            stack.callback(sink.detach)  # leave sys.stdout open
        yield source, sink


def translate_input(
    restored: restoring.Restored,
    settings: DecodeSettings,
    input_length: int,
    total_lines: int | None,
    rows: Sharding | None,
) -> tuple[line_translation.TranslationStats, list[str], list[str]]:
    """Translates the input to the output chunk by chunk, each batch's rows split by `rows`
    (None: one device). Returns (statistics, every output line if a reference or plot needs
    them else [], the input if the plot needs it else [])."""
    interactive = _INPUT.value is None and sys.stdin.isatty()
    chunk_lines = 1 if interactive else CHUNK_BATCHES * settings.batch_size
    keep_outputs = _REFERENCE.value is not None
    outputs: list[str] = []

    def translate(texts: list[str]) -> list[str]:
        return translate_texts(
            restored.model,
            restored.params,
            restored.tokenizer,
            texts,
            settings,
            input_length,
            rows=rows,
        )

    with (
        open_streams() as (source, sink),
        tqdm(
            total=total_lines,
            unit=" lines",
            file=sys.stderr,
            disable=interactive or not (_PROGRESS.value and sys.stderr.isatty()),
            dynamic_ncols=True,
        ) as bar,
    ):
        chunks = line_translation.line_chunks(source, _INPUT.value or "stdin", chunk_lines)
        inputs = []
        if _ATTENTION_PLOT.value:  # one sentence: read it all first to check
            inputs = [line for chunk in chunks for line in chunk]
            num_sentences = sum(1 for line in inputs if line.strip())
            if num_sentences != 1:
                fail(
                    f"--attention_plot draws one sentence, but the input has {num_sentences} "
                    "non-empty lines: give exactly one."
                )
            chunks = [inputs]
        write_lines = line_translation.write_lines(sink)

        def write(texts: list[str]) -> None:
            write_lines(texts)
            if keep_outputs:
                outputs.extend(texts)

        stats = line_translation.translate_lines(
            chunks,
            translate,
            restored.tokenizer,
            input_length,
            write,
            on_progress=bar.update,
        )
    return stats, outputs, inputs


def report_truncation(stats: line_translation.TranslationStats, max_input_length: int) -> None:
    if not stats.truncated_lines:
        return
    shown = ", ".join(map(str, stats.truncated_lines[:10]))
    more = ", ..." if len(stats.truncated_lines) > 10 else ""
    print(
        f"Warning: truncated {len(stats.truncated_lines)} input line(s) longer than "
        f"{max_input_length} subwords (line(s) {shown}{more}): split them into shorter "
        "sentences.",
        file=sys.stderr,
    )


def draw_attention(
    restored: restoring.Restored, settings: DecodeSettings, input_length: int, inputs: list[str]
) -> None:
    sentence = next(line for line in inputs if line.strip())
    attention = attention_plot.sentence_attention(
        restored.model,
        restored.params,
        restored.tokenizer,
        sentence,
        beam_size=settings.beam_size,
        alpha=settings.alpha,
        max_extra_length=settings.max_extra_length,
        max_input_length=input_length,
    )
    attention_plot.plot_attention(attention, _ATTENTION_PLOT.value)
    print(f"Attention plot written to {_ATTENTION_PLOT.value}.", file=sys.stderr)


def print_scores(outputs: list[str], references: list[str]) -> None:
    """sacreBLEU lines, to stdout if the translations went to --output, else to stderr."""
    if len(references) != len(outputs):
        fail(
            f"The reference {_REFERENCE.value} has {len(references)} lines but the input has "
            f"{len(outputs)}: give one reference line per input line."
        )
    if not outputs:
        print("No scores: the input is empty.", file=sys.stderr)
        return
    scores = scoring.corpus_scores(
        outputs, references, tokenized_lowercase=_TOKENIZED_LOWERCASE.value
    )
    for score in scores:
        print(score.line, file=sys.stdout if _OUTPUT.value else sys.stderr)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        fail(f"Unexpected arguments: {' '.join(argv[1:])}")
    check_flags()
    split_the_cpu()  # before anything starts JAX
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        keep_compiled_decoders(_COMPILATION_CACHE_DIR.value)
    except OSError as error:
        fail(f"--compilation_cache_dir: cannot create {error.filename} ({error.strerror}).")
    try:
        mesh = decoding_mesh()
        restored = restore(mesh)
        settings = decode_settings(restored.config.decode)
        rows = None
        if mesh is not None:
            batch_size, rows = partitioning.decoding_rows(mesh, settings.batch_size)
            settings = dataclasses.replace(settings, batch_size=batch_size)
        input_length = max_input_length(restored.config)
        where = f"{mesh.size} devices" if mesh is not None else "1 device"
        print(
            f"Decoding with {settings.describe()}, inputs up to {input_length} subwords, on "
            f"{where} ({jax.local_devices()[0].platform}).",
            file=sys.stderr,
        )
        total_lines = None
        if _INPUT.value:
            with open(_INPUT.value, "rb") as file:
                total_lines = sum(1 for _ in file)
        references = read_reference(total_lines)
        stats, outputs, inputs = translate_input(
            restored, settings, input_length, total_lines, rows
        )
        print(stats.speed_line(), file=sys.stderr)
        report_truncation(stats, input_length)
        if _ATTENTION_PLOT.value:
            draw_attention(restored, settings, input_length, inputs)
        if references is not None:
            print_scores(outputs, references)
    except (
        restoring.RestoreError,
        ConfigError,
        line_translation.InputError,
        FileExistsError,
        OSError,
    ) as error:
        fail(str(error))


if __name__ == "__main__":
    app.run(main)
