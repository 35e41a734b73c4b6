"""What train.py refuses before its first step, each as one line saying what to change: a
cluster it cannot join (instead of every host training alone as process 0 of 1), lengths
beyond the model's positions, bad decode settings, cudnn attention where it cannot run, and an
exception raised inside a config file (reported as such, not as a misspelt override)."""

import os
import re
import subprocess
import sys

import pytest

from configs import default
from tests.train_runner import REPO, environment
from training import configuration, distributed
from training.errors import ConfigError

TINY = REPO / "tests" / "train_tiny_config.py"


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, None),
        ({"SLURM_NTASKS": "4"}, ("SLURM: SLURM_NTASKS=4", 4)),
        ({"OMPI_COMM_WORLD_SIZE": "8"}, ("Open MPI: OMPI_COMM_WORLD_SIZE=8", 8)),
        ({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, ("TPU pod: TPU_WORKER_HOSTNAMES lists 4 hosts", 4)),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ],
)
def test_cluster_in_environment(environ, expected):
    assert distributed.cluster_in_environment(environ) == expected


def train_py(*args, env_extra=None, timeout=300):
    env = {**environment(1), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: "), last
    for fragment in fragments:
        assert fragment in last, last


def test_a_cluster_that_cannot_be_joined_stops_train_py(tmp_path):
    """Open MPI says 2 processes, but JAX finds no coordinator: before, this process went on
    alone as process 0 of 1."""
    result = train_py(
        f"--config={TINY}", f"--workdir={tmp_path}", env_extra={"OMPI_COMM_WORLD_SIZE": "2"}
    )
    assert_one_line_error(
        result, "Open MPI: OMPI_COMM_WORLD_SIZE=2", "JAX could not join them", "--coordinator"
    )
    assert not (tmp_path / "checkpoints").exists()


def test_an_exception_in_a_config_file_is_reported_as_such(tmp_path):
    config_file = tmp_path / "broken_config.py"
    config_file.write_text(
        "from configs import default\n\n\ndef get_config():\n"
        "    config = default.get_config()\n    config.modl.d_model = 64\n    return config\n"
    )
    result = train_py(f"--config={config_file}", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(result, "AttributeError", f"{config_file}, line 6")
    assert "unknown config field" not in result.stderr


def test_bad_decode_setting_stops_train_py_before_training(tmp_path):
    result = train_py(f"--config={TINY}", f"--workdir={tmp_path}", "--config.decode.beam_size=0")
    assert_one_line_error(result, "beam_size must be a positive integer, got 0", "config.decode")
    assert not (tmp_path / "tokenizer").exists()  # nothing was started


def checked(**changes):
    config = default.get_config()
    for dotted, value in changes.items():
        section, _, field = dotted.rpartition("__")
        target = config[section] if section else config
        target[field] = value
    configuration.check_config(config)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data__max_eval_length": 65}, "data.max_eval_length=65 must be between 2 and model"),
        ({"data__max_predict_length": 100}, "data.max_predict_length=100"),
        ({"model__max_length": 32}, "must be between 2 and model.max_length=32"),
        ({"decode__beam_size": 0}, "beam_size must be a positive integer, got 0"),
        ({"decode__alpha": -1.0}, "alpha (the length penalty's exponent) must be >= 0"),
        ({"decode__max_extra_length": -1}, "max_extra_length must be an integer >= 0"),
        ({"decode__batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"max_steps_in_flight": -1}, "max_steps_in_flight"),
        ({"model__num_heads": 0}, "must be positive"),
    ],
)
def test_bad_values_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        checked(**changes)


@pytest.mark.parametrize(
    "dtype, attention_dropout, platform, message",
    [
        ("auto", 0.0, "cpu", "needs a GPU"),
        ("float32", 0.0, "gpu", "model.dtype 'bfloat16' or 'auto' (it computes in float32)"),
        ("auto", 0.1, "gpu", "model.attention_dropout_rate=0 (it is 0.1)"),
    ],
)
def test_cudnn_attention_where_it_cannot_run(dtype, attention_dropout, platform, message):
    config = default.get_config()
    config.model.attention_implementation = "cudnn"
    config.model.dtype = dtype
    config.model.attention_dropout_rate = attention_dropout
    with pytest.raises(ConfigError) as error:
        configuration.check_attention(config, platform)
    assert message in str(error.value)
    assert "attention_implementation='xla'" in str(error.value)


def test_cudnn_attention_where_it_runs():
    config = default.get_config()
    config.model.attention_implementation = "cudnn"
    configuration.check_attention(config, "gpu")  # auto -> bfloat16, no attention dropout


def test_default_configs_pass():
    for name in ("base", "default", "multi30k", "big"):
        module = __import__(f"configs.{name}", fromlist=["get_config"])
        configuration.check_config(module.get_config())
    assert os.path.exists(TINY)
