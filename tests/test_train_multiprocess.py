"""`train.py` as 2 processes with 2 simulated CPU devices each, coordinated over 127.0.0.1 with
jax.distributed, against 1 process with 4 devices: the same losses, evaluation and checkpoint.
The processes always end: a failing one does not leave the other waiting forever."""

import signal

import numpy as np
import pytest

from tests.train_runner import (  # noqa: F401
    TrainProcesses,
    checkpoint_steps,
    finish,
    free_port,
    metrics,
    prepared_dir,
    train_losses,
    wait_for,
)

OVERRIDES = {
    "num_train_steps": 3,
    "num_bleu_examples": 8,  # decoding with parameters spread over both processes
    "num_sample_translations": 0,
}


def test_two_processes_train_like_one_with_the_same_devices(tmp_path, prepared_dir):  # noqa: F811
    single, multi = tmp_path / "one_process", tmp_path / "two_processes"
    port = free_port()
    with TrainProcesses() as processes:
        one = processes.start(single, prepared_dir, OVERRIDES, devices=4)
        pair = [
            processes.start(
                multi,
                prepared_dir,
                OVERRIDES,
                devices=2,
                extra_args=[
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
            )
            for i in range(2)
        ]
        results = [finish(p, timeout=240) for p in [one, *pair]]  # kills what overruns
    for name, (code, _, stderr) in zip(["1x4", "2x2 #0", "2x2 #1"], results, strict=True):
        assert code == 0, f"{name} failed ({code}):\n{stderr[-4000:]}"
    assert "Devices: 4 (2 per host), hosts: 2" in results[1][2]

    np.testing.assert_allclose(train_losses(multi), train_losses(single), rtol=1e-6, atol=1e-6)
    final_single, final_multi = metrics(single)[-1], metrics(multi)[-1]
    for key in ("eval/loss", "eval/accuracy", "eval/bleu"):
        np.testing.assert_allclose(final_multi[key], final_single[key], rtol=1e-5, err_msg=key)
    assert checkpoint_steps(multi) == checkpoint_steps(single) == [3]
    assert sorted(p.name for p in (multi / "checkpoints" / "3" / "data").glob("*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]


def test_a_process_whose_peer_fails_ends_by_itself(tmp_path, prepared_dir):  # noqa: F811
    """Process 1 dies at start-up (a bad flag); process 0 gives up waiting for it after
    --initialization_timeout instead of hanging."""
    port = free_port()
    coordination = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    with TrainProcesses() as processes:
        waiting = processes.start(
            tmp_path,
            prepared_dir,
            OVERRIDES,
            devices=2,
            extra_args=[*coordination, "--process_id=0", "--initialization_timeout=5"],
        )
        failing = processes.start(
            tmp_path,
            prepared_dir,
            {"num_train_step": 3},
            devices=2,
            extra_args=[*coordination, "--process_id=1"],
        )
        assert finish(failing, timeout=120)[0] != 0
        code, _, stderr = finish(waiting, timeout=120)
    assert code != 0, "process 0 claims success without its peer"


@pytest.mark.slow  # a minute or more on a 2-core CPU: runs in `make test-slow`
def test_sigterm_to_one_process_makes_both_save_the_same_step_and_exit_0(tmp_path, prepared_dir):  # noqa: F811
    """JAX's preemption service tells every process the step at which to save, whichever one
    received the signal."""
    port = free_port()
    long_run = {**OVERRIDES, "num_train_steps": 5000, "num_bleu_examples": 0}
    with TrainProcesses() as processes:
        pair = [
            processes.start(
                tmp_path,
                prepared_dir,
                long_run,
                devices=2,
                extra_args=[
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
            )
            for i in range(2)
        ]
        wait_for(lambda: len(metrics(tmp_path)) > 10, pair[0], "10 logged steps")
        pair[1].send_signal(signal.SIGTERM)
        results = [finish(p, timeout=120) for p in pair]
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
        assert "SIGTERM: saved the checkpoint of step" in stderr
    saved = checkpoint_steps(tmp_path)
    assert len(saved) == 1 and 10 < saved[0] < 5000
    assert metrics(tmp_path)[-1]["step"] == saved[0]
