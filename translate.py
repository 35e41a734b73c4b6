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
onto this host's first device, or sharded over all local devices with --mesh_shape.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

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
    "(default: everything on the first device).",
)
_PROGRESS = flags.DEFINE_bool(
    "progress", True, "Show a progress bar on stderr when it is a terminal (--noprogress: never)."
)

CHUNK_BATCHES = 32  # lines read (and sorted by length) at a time: this many batches


def fail(message: str) -> None:
    sys.exit(f"translate.py: error: {message}")


def check_flags() -> None:
    if (_WORKDIR.value is None) == (_CHECKPOINT.value is None):
        raise app.UsageError(
            "Pass exactly one of --workdir=DIR or --checkpoint=DIR/checkpoints/STEP."
        )
    for name, value, low in [
        ("beam_size", _BEAM_SIZE.value, 1),
        ("batch_size", _BATCH_SIZE.value, 1),
        ("max_extra_length", _MAX_EXTRA_LENGTH.value, 0),
        ("alpha", _ALPHA.value, 0),
    ]:
        if value is not None and value < low:
            raise app.UsageError(f"--{name} must be at least {low}, got {value}.")
    if _TOKENIZED_LOWERCASE.value and _REFERENCE.value is None:
        raise app.UsageError("--tokenized_lowercase needs --reference=FILE.")


def make_mesh():
    """None (first device) or a mesh over the local devices from --mesh_shape."""
    if not _MESH_SHAPE.value:
        return None
    from training import partitioning

    try:
        shape = [int(size) for size in _MESH_SHAPE.value]
    except ValueError:
        raise app.UsageError(f"--mesh_shape must be integers, got {_MESH_SHAPE.value}.") from None
    return partitioning.make_mesh(shape, jax.local_devices())


@contextlib.contextmanager
def open_streams(input_path: str | None, output_path: str | None):
    """(binary input, UTF-8 text output), files or stdin/stdout."""
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open(input_path, "rb")) if input_path else sys.stdin.buffer
        if output_path:
            sink = stack.enter_context(open(output_path, "w", encoding="utf-8", newline="\n"))
        else:
            sink = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
            stack.callback(sink.detach)
        yield source, sink


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    check_flags()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

    from decoding import attention_plot, line_translation, scoring, translate_texts
    from training import averaging, restoring
    from training.errors import ConfigError

    try:
        restored = restoring.restore_for_translation(
            _WORKDIR.value or _CHECKPOINT.value,
            average_last=_AVERAGE_LAST.value,
            config=_CONFIG.value,
            tokenizer_file=_TOKENIZER.value,
            mesh=make_mesh(),
        )
    except (restoring.RestoreError, ConfigError) as error:
        fail(str(error))
    config, model = restored.config, restored.model
    where = restored.checkpoints_dir
    steps = restored.steps
    read = f"step {steps[-1]}" if len(steps) == 1 else f"the mean of steps {steps}"
    print(f"Restored {read} from {where}.", file=sys.stderr)
    if _SAVE_AVERAGE.value:
        try:
            saved = averaging.save_average(
                _SAVE_AVERAGE.value,
                steps[-1],
                restored.params,
                config,
                restored.tokenizer.to_bytes(),
                steps,
                where,
            )
        except (FileExistsError, OSError) as error:
            fail(str(error))
        print(f"Saved the averaged checkpoint to {saved}.", file=sys.stderr)

    decode = config.decode
    settings = dict(
        beam_size=_BEAM_SIZE.value or decode.beam_size,
        alpha=decode.alpha if _ALPHA.value is None else _ALPHA.value,
        max_extra_length=(
            decode.max_extra_length if _MAX_EXTRA_LENGTH.value is None else _MAX_EXTRA_LENGTH.value
        ),
        batch_size=_BATCH_SIZE.value or decode.batch_size,
        max_input_length=min(config.data.max_predict_length, model.config.max_length),
    )
    print(f"Decoding with {settings}.", file=sys.stderr)

    def translate(texts: list[str]) -> list[str]:
        return translate_texts(model, restored.params, restored.tokenizer, texts, **settings)

    try:
        references = None
        if _REFERENCE.value:
            with open(_REFERENCE.value, "rb") as file:
                references = line_translation.read_lines(file, _REFERENCE.value)
        total = None
        if _INPUT.value:
            with open(_INPUT.value, "rb") as file:
                total = sum(1 for _ in file)
            if references is not None and len(references) != total:
                fail(
                    f"The reference {_REFERENCE.value} has {len(references)} lines but the input "
                    f"{_INPUT.value} has {total}: give one reference line per input line."
                )
        from tqdm import tqdm

        interactive = _INPUT.value is None and sys.stdin.isatty()
        chunk_lines = 1 if interactive else CHUNK_BATCHES * settings["batch_size"]
        outputs: list[str] = []
        with (
            open_streams(_INPUT.value, _OUTPUT.value) as (source, sink),
            tqdm(
                total=total,
                unit=" lines",
                file=sys.stderr,
                disable=not (_PROGRESS.value and sys.stderr.isatty()) or interactive,
                dynamic_ncols=True,
            ) as bar,
        ):
            input_name = _INPUT.value or "stdin"
            chunks = line_translation.line_chunks(source, input_name, chunk_lines)
            if _ATTENTION_PLOT.value:
                chunks = [[line for chunk in chunks for line in chunk]]
                sentences = [line for line in chunks[0] if line.strip()]
                if len(sentences) != 1:
                    fail(
                        f"--attention_plot draws one sentence, but the input has "
                        f"{len(sentences)} non-empty lines: give exactly one."
                    )
            write_lines = line_translation.write_lines(sink)

            def write(texts: list[str]) -> None:
                write_lines(texts)
                if references is not None:
                    outputs.extend(texts)

            stats = line_translation.translate_lines(
                chunks,
                translate,
                restored.tokenizer,
                settings["max_input_length"],
                write,
                on_progress=bar.update,
            )
    except (line_translation.InputError, OSError) as error:
        fail(str(error))

    print(stats.speed_line(), file=sys.stderr)
    if stats.truncated_lines:
        shown = ", ".join(map(str, stats.truncated_lines[:10]))
        more = ", ..." if len(stats.truncated_lines) > 10 else ""
        print(
            f"Warning: {len(stats.truncated_lines)} input lines (lines {shown}{more}) were "
            f"longer than {settings['max_input_length']} subwords and were truncated: split "
            "them into shorter sentences.",
            file=sys.stderr,
        )
    if _ATTENTION_PLOT.value:
        sentence = next(line for line in chunks[0] if line.strip())
        attention = attention_plot.sentence_attention(
            model,
            restored.params,
            restored.tokenizer,
            sentence,
            **{k: v for k, v in settings.items() if k != "batch_size"},
        )
        try:
            attention_plot.plot_attention(attention, _ATTENTION_PLOT.value)
        except OSError as error:
            fail(str(error))
        print(f"Attention plot written to {_ATTENTION_PLOT.value}.", file=sys.stderr)
    if references is not None:
        if len(references) != len(outputs):
            fail(
                f"The reference {_REFERENCE.value} has {len(references)} lines but the input "
                f"has {len(outputs)}: give one reference line per input line."
            )
        scores_to = sys.stdout if _OUTPUT.value else sys.stderr  # stdout if translations aren't
        for score in scoring.corpus_scores(
            outputs, references, tokenized_lowercase=_TOKENIZED_LOWERCASE.value
        ):
            print(score.line, file=scores_to)


if __name__ == "__main__":
    app.run(main)
