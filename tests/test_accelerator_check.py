"""`make accelerator-check` and `make wheelhouse` on a CPU host: nothing downloaded.

The check says there is no accelerator and stops (exit 2); its plan for GPU and TPU hosts
(which environment, which install commands, which benchmarks) is checked piece by piece; the
wheelhouse's list leaves JAX, CUDA and the host's stack out and keeps what the project needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import accelerator_check as check  # noqa: E402
import build_wheelhouse  # noqa: E402


def test_on_a_cpu_host_it_says_there_is_no_accelerator_and_stops(tmp_path):
    report = tmp_path / "report.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}  # no nvidia-smi
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts/accelerator_check.py"), f"--report={report}",
         f"--venv={tmp_path / 'venv'}", "--dry-run"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "No GPU or TPU found (JAX" in done.stdout and "sees only cpu" in done.stdout
    assert not (tmp_path / "venv").exists() and not report.exists()


def test_help_describes_the_exit_status():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts/accelerator_check.py"), "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "2 no GPU or TPU found" in done.stdout


@pytest.mark.parametrize(
    "hardware,extra",
    [
        ({"gpus": ["NVIDIA H200"], "cuda_driver": "13.0"}, "cuda13"),
        ({"gpus": ["NVIDIA A100-SXM4-80GB"], "cuda_driver": "12.4"}, "cuda12"),
        ({"tpu_devices": ["/dev/accel0"]}, "tpu"),
        ({}, None),
    ],
)
def test_the_extra_follows_the_hardware(hardware, extra):
    assert check.extra_for(hardware) == extra
    backend, keeps_host_jax, chosen = check.plan(None, None, hardware)
    assert chosen == extra and not keeps_host_jax
    assert backend == {"cuda13": "gpu", "cuda12": "gpu", "tpu": "tpu", None: None}[extra]


def test_a_host_jax_that_sees_the_gpu_is_kept():
    host = {"jax": "0.11.2", "backend": "gpu", "device_kind": "NVIDIA H200", "device_count": 8}
    assert check.plan(None, host, {"gpus": ["NVIDIA H200"], "cuda_driver": "13.0"}) == (
        "gpu",
        True,
        None,
    )


def args_for(tmp_path, **overrides) -> argparse.Namespace:
    args = check.parse_args([f"--venv={tmp_path / 'venv'}", f"--wheelhouse={tmp_path / 'wh'}"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_offline_install_takes_only_what_is_missing_from_the_wheelhouse(tmp_path):
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh" / "grain-0.2.18-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    commands = check.install_commands(args_for(tmp_path), host_has_accelerator=True, extra=None)
    assert commands[1][-2:] == ["--link-site-packages", str(tmp_path / "venv")]
    assert commands[2][-2:] == ["--install-missing-from", str(tmp_path / "wh")]
    assert {"--no-index", "--no-deps", "-e"} <= set(commands[3])
    assert not any("index-url" in part for command in commands for part in command)


def test_the_venv_sees_the_host_packages_after_its_own(tmp_path):
    """A venv made by a Python that is itself a venv still imports that Python's packages."""
    host = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(host)], check=True)
    marker = next((host / "lib").glob("python*/site-packages")) / "host_only_module.py"
    marker.write_text("FROM_HOST = True\n")
    venv = tmp_path / "venv"
    for command in check.install_commands(
        args_for(tmp_path, python=str(host / "bin/python")), host_has_accelerator=True, extra=None
    )[:2]:
        subprocess.run(command, check=True, capture_output=True)
    code = "import host_only_module; print(host_only_module.FROM_HOST)"
    done = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr


def test_without_a_wheelhouse_it_installs_from_the_index(tmp_path):
    keep = check.install_commands(args_for(tmp_path), host_has_accelerator=True, extra=None)
    assert keep[2][-3:] == ["-e", str(REPO), "pytest"]  # the host's JAX satisfies the range
    fresh = check.install_commands(args_for(tmp_path), host_has_accelerator=False, extra="cuda13")
    assert "--system-site-packages" not in fresh[0]
    assert fresh[-1][-5:] == [
        "-c",
        str(REPO / "constraints.txt"),
        "-e",
        f"{REPO}[cuda13]",
        "pytest",
    ]


def test_install_missing_from_keeps_what_is_installed(tmp_path, monkeypatch):
    (tmp_path / "numpy-1.0-cp312-cp312-manylinux2014_x86_64.whl").touch()  # installed here
    (tmp_path / "surely_not_installed_pkg-1.0-py3-none-any.whl").touch()
    calls = []
    monkeypatch.setattr(check.subprocess, "run", lambda command, **_: calls.append(command))
    check.install_missing_from(tmp_path)
    (command,) = calls
    assert command[-1].endswith("surely_not_installed_pkg-1.0-py3-none-any.whl")
    assert not any("numpy" in part for part in command)


def test_benchmarks_are_bfloat16_fused_attention_at_the_per_device_batch(tmp_path):
    commands = check.benchmark_commands(args_for(tmp_path), device_count=8, report_dir=tmp_path)
    assert set(commands) == {"base", "big", "base_xla_attention"}
    for name, command in commands.items():
        assert "--config.model.dtype=bfloat16" in command
        assert "--batch_size=1024" in command and "--length=256" in command
        attention = "xla" if name == "base_xla_attention" else "auto"
        assert f"--config.model.attention_implementation={attention}" in command
        assert f"--json={tmp_path / (name + '.json')}" in command


def test_a_step_past_its_time_limit_is_killed_and_recorded():
    report = {"steps": {}}
    step = check.run_step(report, "sleep", [sys.executable, "-c", "import time; time.sleep(60)"], 1)
    assert step["returncode"] != 0 and "killed after the 1 s limit" in step["output_tail"]
    assert report["steps"]["sleep"]["returncode"] == step["returncode"]


def test_goals_and_test_counts_in_the_report(tmp_path):
    results = check.goals({"base": {"mfu": 0.5}, "big": {"mfu": 0.4}})
    assert results["base_mfu"]["met"] is True and results["big_mfu"]["met"] is False
    assert results["big_tokens_per_s_per_device"]["met"] is None  # not measured
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3">'
        '<testcase name="a"><skipped message="needs a GPU" /></testcase></testsuite></testsuites>'
    )
    counts = check.junit_counts(junit)
    assert counts == {
        "tests": 3, "failures": 1, "errors": 0, "skipped": 1, "skip_reasons": ["needs a GPU"],
    }  # fmt: skip
    measured = {
        "throughput_one_host": [
            {"host_target_tokens_per_cpu_s": 1.2e6, "host_target_tokens_per_wall_s": 1.1e6}
        ]
    }
    output = "load average 1.0; throughput, one host\n" + json.dumps(measured, indent=1)
    figures = check.pipeline_figures(output, {"base": {"nonpad_tokens_per_s": 600_000.0}})
    assert figures["cores_needed"] == 0.5 and figures["target_tokens_per_wall_s"] == 1.1e6


def test_the_wheelhouse_has_the_project_but_not_jax_cuda_or_the_host_stack():
    wanted = {line.split("==")[0].split(">=")[0] for line in build_wheelhouse.wanted("3.12")}
    assert {"grain", "array-record", "tensorflow-datasets", "ml-collections", "num2words",
            "tensorboardx", "pytest", "setuptools"} <= wanted  # fmt: skip
    assert not wanted & {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
                         "tensorstore", "sentencepiece", "sacrebleu", "pyarrow"}  # fmt: skip
    assert not any(name.startswith(("nvidia-", "jax-cuda", "libtpu")) for name in wanted)


@pytest.mark.parametrize(
    "wheel,ok",
    [
        ("grain-0.2.18-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl", True),
        ("protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl", True),
        ("six-1.17.0-py2.py3-none-any.whl", True),
        ("grain-0.2.18-cp311-cp311-manylinux_2_24_x86_64.whl", False),
        ("grain-0.2.18-cp312-cp312-macosx_11_0_arm64.whl", False),
    ],
)
def test_wheel_tags_are_checked_for_the_target_python(wheel, ok):
    assert build_wheelhouse.compatible(wheel, "3.12") is ok
