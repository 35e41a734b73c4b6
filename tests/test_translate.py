"""translate.py and what it stands on, on a tiny checkpoint trained by train.py on 8 devices
laid out as (data, fsdp, tensor) = (2, 2, 2): a checkpoint saved from that mesh translates in
translate.py (its CPU split into 2 devices, each decoding half of every batch) exactly as on
the 8-device mesh here; scores equal the sacrebleu command's on the same files; checkpoint
averaging against float64 numpy; line alignment with blank, CRLF, very long and non-UTF-8
lines; every bad-input error is one line; the attention plot is a PNG."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import linen as nn

from decoding import DecodeSettings, line_translation, scoring, translate_texts
from model.parameters import init_params
from tests import train_runner
from training import averaging, partitioning, restoring

REPO = Path(__file__).resolve().parents[1]
SACREBLEU = Path(sys.executable).parent / "sacrebleu"
LONG_LINE = " ".join(["nine hundred and ninety-nine thousand"] * 12)  # > 32 subwords
INPUT_LINES = [
    "one hundred",
    "",
    "twenty-two",
    "   ",
    "seven thousand, nine hundred and ninety-four",
    "eight\u2028hundred",  # a Unicode line separator stays inside its line
    LONG_LINE,
    "fifty-six",
]


# ---------------------------------------------------------------- the checkpoint, built once


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A run of 3 steps of the tiny config on 8 devices (2,2,2), checkpoints at steps 1, 2, 3.
    Built once per test run: pytest-xdist workers share it through a lock."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    run_dir = shared / "translate_tiny_run"
    with open(shared / "translate_tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "checkpoints" / "3").is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
            overrides = {
                "num_train_steps": 3,
                "checkpoint_every_steps": 1,
                "mesh_shape": "(2,2,2)",
                "num_sample_translations": 0,
            }
            train_runner.run(run_dir, shared / "translate_data", overrides, devices=8)
    return run_dir


@pytest.fixture(scope="module")
def sharp_checkpoint(workdir, tmp_path_factory) -> Path:
    """A checkpoint whose outputs vary with the input (the 3-step model repeats one word): the
    run's model initialized at random with its embedding scaled by 4 (peaked next-token
    distributions), laid out on the (2,2,2) mesh and saved from there with the run's config and
    tokenizer. Returns the checkpoint's folder."""
    mesh = partitioning.make_mesh((2, 2, 2), jax.devices()[:8])
    trained = restoring.restore_for_translation(workdir, mesh=mesh)
    params = nn.unbox(init_params(trained.model, jax.random.key(1)))
    params["source_embedding"]["embedding"] *= 4.0
    params = jax.device_put(params, jax.tree.map(lambda x: x.sharding, trained.params))
    return averaging.save_average(
        tmp_path_factory.mktemp("sharp"),
        3,
        params,
        trained.config,
        trained.tokenizer.to_bytes(),
        averaged_steps=[3],
        source=workdir,
    )


def translate_cli(
    args: list[str], *, devices: int = 1, stdin: bytes = b"", env: dict | None = None
) -> subprocess.Popen:
    """Starts translate.py with `devices` CPU devices in its XLA flags (what --mesh_shape lays
    out; without it, translate.py's --devices decides), with `env` added to this process's
    environment."""
    env = {**os.environ, **(env or {})}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "translate.py"), "--noprogress", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdin.write(stdin)
    process.stdin.close()
    return process


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    try:
        process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.returncode, process.stdout.read().decode(), process.stderr.read().decode()


def write_input(path: Path) -> None:
    """INPUT_LINES with CRLF endings on one line and no newline after the last."""
    lines = [line.encode() for line in INPUT_LINES]
    lines[2] += b"\r"
    path.write_bytes(b"\n".join(lines))


# ---------------------------------------------------------------- translate.py end to end


def test_the_command_translates_like_eight_devices_and_scores_like_sacrebleu(
    sharp_checkpoint, tmp_path
):
    source, output, reference = tmp_path / "in.txt", tmp_path / "out.txt", tmp_path / "ref.txt"
    write_input(source)
    reference.write_text("hundert\n\nZweiundzwanzig\n\nsiebentausend\nachthundert\nx\nsechs\n")
    cli = translate_cli(
        [
            f"--checkpoint={sharp_checkpoint}",
            f"--input={source}",
            f"--output={output}",
            f"--reference={reference}",
            "--tokenized_lowercase",
            "--beam_size=2",
            "--batch_size=3",  # on 2 CPU devices (the default): rounded up to 4
        ]
    )

    # Meanwhile, here: the same checkpoint sharded over all 8 devices.
    mesh = partitioning.make_mesh((2, 2, 2), jax.devices()[:8])
    restored = restoring.restore_for_translation(sharp_checkpoint, mesh=mesh)
    embedding = restored.params["source_embedding"]["embedding"]
    assert len(embedding.sharding.device_set) == 8
    settings = DecodeSettings.from_config(restored.config.decode, beam_size=2)
    expected = translate_texts(
        restored.model, restored.params, restored.tokenizer, INPUT_LINES, settings, 32
    )

    code, stdout, stderr = finish(cli)
    assert code == 0, stderr[-3000:]
    translations = output.read_bytes().decode().split("\n")
    assert translations[-1] == ""  # every line ends with a newline, the last one too
    assert translations[:-1] == expected
    assert [t == "" for t in expected] == [not s.strip() for s in INPUT_LINES]
    assert len(set(expected)) >= 4, expected  # outputs depend on the input
    assert "sentences/s" in stderr and "output tokens/s" in stderr
    if (os.cpu_count() or 1) >= 2:
        assert "batches of 4 sentences" in stderr and "on 2 devices (cpu)" in stderr, stderr
    long_line_number = INPUT_LINES.index(LONG_LINE) + 1
    assert (
        f"truncated 1 input line(s) longer than 32 subwords (line(s) {long_line_number})" in stderr
    )

    # The scores printed are the sacrebleu command's on the same files.
    runs = [["-m", "bleu", "chrf"], ["-m", "bleu", "-lc", "-tok", "13a"]]
    wanted = []
    for extra in runs:
        command = [str(SACREBLEU), str(reference), "-i", str(output), *extra, "-w", "2"]
        result = subprocess.run(command + ["-f", "text"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        wanted += [line.strip() for line in result.stdout.splitlines()]
    assert [line.strip() for line in stdout.splitlines()] == wanted
    assert "case:lc|eff:no|tok:13a" in wanted[2]


def test_average_save_and_attention_plot_through_the_command(workdir, tmp_path):
    average_dir, plot = tmp_path / "average", tmp_path / "attention.png"
    cli = translate_cli(
        [
            f"--workdir={workdir}",
            "--average_last=2",
            f"--save_average={average_dir}",
            f"--attention_plot={plot}",
            "--mesh_shape=1,2,4",  # averaged, saved and plotted with sharded parameters
        ],
        devices=8,
        stdin=b"\nseven hundred and two\n\n",
    )
    code, stdout, stderr = finish(cli)
    assert code == 0, stderr[-3000:]
    assert stdout.count("\n") == 3 and stdout.startswith("\n") and stdout.endswith("\n\n")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((average_dir / "average.json").read_text())["averaged_steps"] == [2, 3]

    # The saved average is the float64 mean of steps 2 and 3, and restores as a checkpoint.
    average = restoring.restore_for_translation(average_dir)
    saved, tokenizer = average.params, average.tokenizer
    step_2 = restoring.restore_for_translation(workdir / "checkpoints" / "2").params
    step_3 = restoring.restore_for_translation(workdir / "checkpoints" / "3").params
    mean = jax.tree.map(lambda a, b: (np.float64(a) + np.float64(b)) / 2, step_2, step_3)
    for got, want in zip(jax.tree.leaves(saved), jax.tree.leaves(mean), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    assert tokenizer.to_bytes() == restoring.restore_for_translation(workdir).tokenizer.to_bytes()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        averaging.save_average(average_dir, 3, saved, {}, b"", [3], source=workdir)


def test_compilation_cache_is_written_and_reused(workdir, tmp_path):
    """--compilation_cache_dir fills the folder on the first run; the second run, loading from
    it, translates the same."""
    cache = tmp_path / "compiled"
    args = [f"--workdir={workdir}", f"--compilation_cache_dir={cache}"]
    first = finish(translate_cli(args, stdin=b"seven hundred and two\n"))
    assert first[0] == 0, first[2][-3000:]
    entries = sorted(path.name for path in cache.iterdir())
    assert entries, "nothing was cached"
    second = finish(translate_cli(args, stdin=b"seven hundred and two\n"))
    assert second[0] == 0 and second[1] == first[1]
    assert sorted(path.name for path in cache.iterdir()) == entries  # nothing new to compile


def test_compiled_decoders_are_kept_under_the_cache_home_by_default(workdir, tmp_path):
    """Without --compilation_cache_dir the cache is $XDG_CACHE_HOME/flax-transformer-mt/
    compiled-decoders; an empty flag keeps none; a folder that cannot be made is a one-line
    error."""
    stdin = b"seven hundred and two\n"
    cache_home = tmp_path / "cache-home"
    default = finish(
        translate_cli(
            [f"--workdir={workdir}"], stdin=stdin, env={"XDG_CACHE_HOME": str(cache_home)}
        )
    )
    assert default[0] == 0, default[2][-3000:]
    assert any((cache_home / "flax-transformer-mt" / "compiled-decoders").iterdir())

    no_cache_home = tmp_path / "no-cache-home"
    args = [f"--workdir={workdir}", "--compilation_cache_dir="]
    none = finish(translate_cli(args, stdin=stdin, env={"XDG_CACHE_HOME": str(no_cache_home)}))
    assert none[0] == 0 and none[1] == default[1]
    assert not (no_cache_home / "flax-transformer-mt").exists()

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args = [f"--workdir={workdir}", f"--compilation_cache_dir={a_file / 'cache'}"]
    code, out, err = finish(translate_cli(args, stdin=stdin))
    assert code != 0 and out == ""
    assert err.strip().splitlines() == [
        f"translate.py: error: --compilation_cache_dir: cannot create {a_file / 'cache'} "
        "(Not a directory)."
    ]


def test_averaging_identical_checkpoints_is_the_identity(workdir):
    params = restoring.restore_for_translation(workdir).params
    averaged = averaging.average_params([params, params, params])
    for got, want in zip(jax.tree.leaves(averaged), jax.tree.leaves(params), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(restoring.RestoreError, match="only 3 up to step 3"):
        restoring.restore_for_translation(workdir, average_last=4)


def test_bad_inputs_are_one_line_errors_saying_what_to_do(workdir, tmp_path):
    no_tokenizer = tmp_path / "copied" / "checkpoints" / "3"
    shutil.copytree(workdir / "checkpoints" / "3", no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    two_lines = tmp_path / "two.txt"
    two_lines.write_text("one\ntwo\n")
    checkpoint = f"--workdir={workdir}"
    cases = {
        "No checkpoint found at": ([f"--workdir={tmp_path / 'empty'}"], b""),
        "beam_size must be a positive integer, got 0 (decoding flags: --strategy": (
            [checkpoint, "--beam_size=0"],
            b"",
        ),
        "greedy search keeps one hypothesis but beam_size is 3": (
            [checkpoint, "--strategy=greedy", "--beam_size=3"],
            b"",
        ),
        "does not fit the model config: decoder/layer_0/feed_forward/wi/bias is (64,) in the "
        "checkpoint but (128,)": (
            [checkpoint, f"--config={train_runner.TINY_CONFIG}", "--config.model.d_ff=128"],
            b"",
        ),
        "has no tokenizer (tokenizer/spm.model): pass --tokenizer=": (
            [f"--checkpoint={no_tokenizer}"],
            b"",
        ),
        "stdin line 2 is not valid UTF-8 (byte 0xe9 at byte offset 2)": (
            [checkpoint],
            b"one\ntr\xe9s\n",
        ),
        "has 1 lines but the input": (
            [checkpoint, f"--input={two_lines}", "--reference=/dev/stdin"],
            b"x\n",
        ),
        "--devices must be at least 1, got 0": ([checkpoint, "--devices=0"], b""),
        "Pass --devices or --mesh_shape, not both": (
            [checkpoint, "--devices=2", "--mesh_shape=1,1,2"],
            b"",
        ),
        "--attention_plot draws one sentence, but the input has 2 non-empty lines": (
            [checkpoint, f"--input={two_lines}", f"--attention_plot={tmp_path / 'a.png'}"],
            b"",
        ),
    }
    started = {message: translate_cli(args, stdin=data) for message, (args, data) in cases.items()}
    for message, process in started.items():
        code, stdout, stderr = finish(process)
        last = stderr.strip().splitlines()[-1]
        assert code == 1, stderr[-2000:]
        assert last.startswith("translate.py: error: ") and message in last, stderr[-2000:]
        assert stdout == ""


# ---------------------------------------------------------------- the pieces


def test_line_chunks_keep_alignment(tmp_path):
    path = tmp_path / "in.txt"
    write_input(path)
    with open(path, "rb") as stream:
        chunks = list(line_translation.line_chunks(stream, "in.txt", chunk_lines=3))
    assert [len(c) for c in chunks] == [3, 3, 2]
    assert [line for chunk in chunks for line in chunk] == INPUT_LINES
    with_bom = iter([b"\xef\xbb\xbfone\r\n", b"two"])
    assert list(line_translation.line_chunks(with_bom, "in.txt", 10)) == [["one", "two"]]
    with pytest.raises(line_translation.InputError, match="in.txt line 2 is not valid UTF-8"):
        list(line_translation.line_chunks(iter([b"ok\n", b"\xff\n"]), "in.txt", 10))

    class Tokenizer:  # one subword per character, plus EOS
        def encode(self, text):
            return [3] * len(text) + [1]

    written = []
    stats = line_translation.translate_lines(
        [["ab", "", "a\nb"], ["abcdef"]],
        lambda texts: [t.upper() for t in texts],
        Tokenizer(),
        max_input_length=5,
        write=written.append,
    )
    assert written == [["AB", "", "A B"], ["ABCDEF"]]  # a line break inside an output is a space
    assert (stats.lines, stats.sentences, stats.truncated_lines) == (4, 3, [4])
    assert stats.source_tokens == 3 + 0 + 4 + 5


def test_scores_equal_the_sacrebleu_command(tmp_path):
    hypotheses = ["The cat sat on the mat.", "Hello, world!", "", "Ein kleiner Test ."]
    references = ["the cat sat on a mat.", "Hello, World!", "nothing", "Ein kleiner Test."]
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("\n".join(hypotheses) + "\n")
    ref.write_text("\n".join(references) + "\n")
    command = [str(SACREBLEU), str(ref), "-i", str(hyp), "-w", "2", "-f", "text"]
    cased = subprocess.run(command + ["-m", "bleu", "chrf"], capture_output=True, text=True)
    lowercase = subprocess.run(
        command + ["-m", "bleu", "-lc", "-tok", "13a"], capture_output=True, text=True
    )
    wanted = [line.strip() for line in (cased.stdout + lowercase.stdout).splitlines()]
    scores = scoring.corpus_scores(hypotheses, references, tokenized_lowercase=True)
    assert [score.line for score in scores] == wanted
    assert scores[2].score > scores[0].score > 0  # case matters
    with pytest.raises(ValueError, match="4 translations but 3 references"):
        scoring.bleu(hypotheses, references[:3])
    with pytest.raises(ValueError, match="input is empty"):
        scoring.chrf([], [])
