"""The Multi30k recipe (configs/multi30k.py) trains on the real corpus: a few hundred steps of
`train.py` make the loss fall and give a validation BLEU above zero. Slow (minutes); skipped
when ../shared/data/multi30k is absent."""

import json
import subprocess
import sys

import pytest

from tests.conftest import MULTI30K_DIR, REPO_ROOT

STEPS = 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (MULTI30K_DIR / "train.en.gz").is_file(),
        reason=f"Multi30k not found at {MULTI30K_DIR} (see README: Multi30k)",
    ),
]


def test_a_few_hundred_steps_lower_the_loss_and_give_bleu_above_zero(tmp_path):
    workdir = tmp_path / "run"
    overrides = {
        "data.dir": MULTI30K_DIR,
        "data.prepared_dir": tmp_path / "prepared",
        "num_train_steps": STEPS,
        "batch_size": 32,  # half the recipe's batch: the test stays within minutes
        "warmup_steps": 150,  # reach a useful learning rate within the short run
        "log_every_steps": 50,
        "eval_every_steps": STEPS,  # one evaluation, at the end
        "num_bleu_examples": 200,
        "checkpoint_every_steps": STEPS,
        "decode.beam_size": 1,
    }
    command = [
        sys.executable,
        str(REPO_ROOT / "train.py"),
        f"--config={REPO_ROOT / 'configs' / 'multi30k.py'}",
        f"--workdir={workdir}",
    ] + [f"--config.{key}={value}" for key, value in overrides.items()]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    bleu = [r["eval/bleu"] for r in records if "eval/bleu" in r]
    assert losses[-1] < losses[0] - 1.0, losses  # fell by more than one nat
    assert bleu and bleu[-1] > 0.0, bleu
