"""`make accelerator-check`: install, test and benchmark on a GPU or TPU host; one JSON report.

    python3 scripts/accelerator_check.py [--report=runs/accelerator_check/report.json]
        [--wheelhouse=wheelhouse] [--venv=.venv-accelerator] [--dry-run]

1. Environment. If the host's Python already has a JAX that sees a GPU or TPU, it is kept: a
   venv that sees the host's site-packages (a .pth file) gets the project and what is
   missing, from the wheelhouse (`make wheelhouse`, no index: the host may be offline) or else
   from the index; `pip check` is recorded.
   Otherwise, if `nvidia-smi` or /dev/accel* shows hardware, a fresh venv gets the matching
   extra (cuda12, cuda13 or tpu; from the index) at the versions of constraints.txt.
2. Devices and versions (jax.print_environment_info, packages).
3. The tests marked `accelerator` (pytest -m accelerator tests/test_accelerator.py).
4. benchmark.py for configs/base.py and configs/big.py in bfloat16 with
   attention_implementation='auto' (cuDNN on NVIDIA GPUs, splash on TPUs) at --rows_per_device
   rows of --length tokens per device, and base with XLA attention for comparison.
5. The input pipeline's target tokens per CPU second (scripts/pipeline_throughput.py, the
   embedded numbers corpus at the same rows), against the train step's tokens/s.
Each step has a time limit; the whole check aims at 8 minutes on one GPU. The report holds
every step's command, seconds, exit status and output tail, the figures, and the goals.

Exit status: 0 all steps passed, 1 a step failed, 2 no GPU or TPU here (nothing was run).
Uses only the standard library (it runs before the project's packages are installed), hence
argparse instead of absl.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Goals on an H100/H200 in bfloat16 (docs/accelerators.md).
GOALS = {
    "base_mfu": ("base", "mfu", 0.45),
    "big_mfu": ("big", "mfu", 0.50),
    "big_tokens_per_s_per_device": ("big", "tokens_per_s_per_device", 300_000),
}
PROBE = """
import json, jax
devices = jax.devices()
print(json.dumps({"jax": jax.__version__, "backend": jax.default_backend(),
                  "device_kind": devices[0].device_kind, "device_count": len(devices)}))
"""
VERSIONS = """
import importlib.metadata as m, json, jax
names = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt",
         "jax-cuda13-pjrt", "libtpu", "flax", "optax", "orbax-checkpoint", "grain",
         "tensorflow-datasets", "sentencepiece", "sacrebleu", "numpy", "nvidia-cudnn-cu12",
         "nvidia-cudnn-cu13"]
versions = {}
for name in names:
    try:
        versions[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
devices = jax.devices()
print(json.dumps({"versions": versions, "backend": jax.default_backend(),
                  "devices": [f"{d.id}: {d.device_kind}" for d in devices],
                  "device_count": len(devices),
                  "compute_capability": getattr(devices[0], "compute_capability", None),
                  "environment_info": jax.print_environment_info(return_string=True)}))
"""


def run_step(report: dict, name: str, command: list[str], timeout: float, env=None) -> dict:
    """Runs `command` (killed after `timeout` s), echoing its output; records it under
    report['steps'][name]."""
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    start = time.monotonic()
    lines: list[str] = []

    def echo(stream) -> None:
        for line in stream:
            print(line, end="", flush=True)
            lines.append(line)

    try:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as error:
        returncode, lines = 127, [f"{error}\n"]
    else:
        reader = threading.Thread(target=echo, args=(process.stdout,), daemon=True)
        reader.start()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
            lines.append(f"[killed after the {timeout:.0f} s limit]\n")
        reader.join(timeout=10)
    output = "".join(lines)
    step = {
        "command": command,
        "seconds": round(time.monotonic() - start, 1),
        "returncode": returncode,
        "output_tail": output[-4000:],
    }
    report["steps"][name] = step
    return {**step, "output": output}


def probe(python: str, code: str = PROBE, env=None) -> dict | None:
    """What `python` reports about its JAX (None if it has none or it fails)."""
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=300, env=env
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def detect_hardware() -> dict:
    """GPUs or TPUs visible without JAX: nvidia-smi's GPUs and CUDA version, /dev/accel*."""
    found: dict = {}
    if shutil.which("nvidia-smi"):
        try:
            header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
            names = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            header = names = None
        if names is not None and names.returncode == 0 and names.stdout.strip():
            found["gpus"] = names.stdout.strip().splitlines()
            match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header.stdout if header else "")
            if match:
                found["cuda_driver"] = f"{match.group(1)}.{match.group(2)}"
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        found["tpu_devices"] = sorted(glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*"))
    return found


def extra_for(hardware: dict) -> str | None:
    """The pyproject extra that brings JAX for this hardware."""
    if "gpus" in hardware:
        major = int(hardware.get("cuda_driver", "12.0").split(".")[0])
        return "cuda13" if major >= 13 else "cuda12"
    if "tpu_devices" in hardware:
        return "tpu"
    return None


def venv_python(venv: Path) -> str:
    return str(venv / "bin" / "python")


def install_commands(args, host_has_accelerator: bool, extra: str | None) -> list[list[str]]:
    """The commands that make --venv ready (module docstring, step 1)."""
    python = venv_python(args.venv)
    wheelhouse = Path(args.wheelhouse)
    if host_has_accelerator:
        commands = [
            [args.python, "-m", "venv", str(args.venv)],
            # The host's packages stay visible (after the venv's own), even when the host's
            # Python is itself a venv, which `venv --system-site-packages` would not see into.
            [args.python, str(Path(__file__)), "--link-site-packages", str(args.venv)],
        ]
        if wheelhouse.is_dir() and any(wheelhouse.glob("*.whl")):
            # Only what the host lacks comes from the wheelhouse; its versions of the rest stay.
            commands.append(
                [python, str(Path(__file__)), "--install-missing-from", str(wheelhouse)]
            )
            commands.append(
                [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                 "--no-build-isolation", "-e", str(REPO)]
            )  # fmt: skip
        else:
            commands.append([python, "-m", "pip", "install", "--quiet", "-e", str(REPO), "pytest"])
        return commands
    return [
        [args.python, "-m", "venv", str(args.venv)],
        [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(REPO / "constraints.txt"),
            "-e",
            f"{REPO}[{extra}]",
            "pytest",
        ],
    ]


def link_site_packages(venv: Path) -> None:
    """Makes this Python's site-packages (and user site) visible to `venv`, after its own, by a
    .pth file: how the host's JAX stack is used without copying or changing it."""
    import site
    import sysconfig

    host_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    host_dirs += [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = venv / "lib" / version / "site-packages" / "_host_site_packages.pth"
    unique = [d for i, d in enumerate(host_dirs) if d not in host_dirs[:i] and Path(d).is_dir()]
    target.write_text("".join(f"{directory}\n" for directory in unique))
    print(f"{target}: {unique}")


def install_missing_from(wheelhouse: Path) -> None:
    """Installs (no index, no dependencies) the wheelhouse's wheels whose distribution this
    Python does not have yet (or setuptools older than the build needs), so that the host's
    versions of everything else stay."""
    import importlib.metadata

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    have = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    if int(have.get("setuptools", "0").split(".")[0]) < 77:  # pyproject's build-system needs 77
        have.pop("setuptools", None)
    missing = [
        str(wheel)
        for wheel in sorted(wheelhouse.glob("*.whl"))
        if canonical(wheel.name.split("-")[0]) not in have
    ]
    print(f"{len(missing)} of {len(list(wheelhouse.glob('*.whl')))} wheels are missing here.")
    if missing:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                *missing,
            ],
            check=True,
        )


def benchmark_commands(args, device_count: int, report_dir: Path) -> dict[str, list[str]]:
    python = venv_python(args.venv)
    rows = args.rows_per_device * device_count
    runs = {"base": ("configs/base.py", "auto", True), "big": ("configs/big.py", "auto", True)}
    if args.compare_xla:
        runs["base_xla_attention"] = ("configs/base.py", "xla", False)
    commands = {}
    for name, (config, attention, decode) in runs.items():
        commands[name] = [
            python,
            "benchmark.py",
            f"--config={config}",
            "--config.model.dtype=bfloat16",
            f"--config.model.attention_implementation={attention}",
            f"--batch_size={rows}",
            f"--length={args.length}",
            f"--steps={args.steps}",
            "--warmup_steps=3",
            f"--decode={'true' if decode else 'false'}",
            "--decode_repeats=2",
            f"--json={report_dir / (name + '.json')}",
        ]
    return commands


def device_env(backend: str) -> dict[str, str]:
    """The environment for the venv's programs: JAX on the accelerator (tests/conftest.py
    defaults to CPU otherwise), CPU too (for the CPU-restore test)."""
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = {"gpu": "cuda,cpu", "tpu": "tpu,cpu"}.get(backend, "")
    env.pop("XLA_FLAGS", None)
    return env


def junit_counts(path: Path) -> dict:
    if not path.exists():
        return {}
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["skip_reasons"] = sorted(
        {skip.get("message", "") for skip in suite.iter("skipped") if skip.get("message")}
    )
    return counts


def pipeline_figures(output: str, benchmarks: dict) -> dict:
    """The input pipeline's target tokens per CPU second (scripts/pipeline_throughput.py's
    JSON, the last thing it prints) and how many cores' worth the fastest benchmarked train
    step (all devices of this host) consumes."""
    start = output.rfind("\n{\n")
    try:
        measured = json.loads(output[start + 1 :] if start >= 0 else output)
        one_host = measured["throughput_one_host"][0]
    except (ValueError, KeyError, IndexError):
        return {}
    per_cpu_s = one_host["host_target_tokens_per_cpu_s"]
    consumed = max((b.get("nonpad_tokens_per_s", 0) for b in benchmarks.values()), default=0)
    return {
        "target_tokens_per_cpu_s": per_cpu_s,
        "target_tokens_per_wall_s": one_host["host_target_tokens_per_wall_s"],
        "fastest_train_nonpad_tokens_per_s": consumed,
        "cores_needed": consumed / per_cpu_s if per_cpu_s else None,
        "host_cores": os.cpu_count(),
    }


def goals(benchmarks: dict) -> dict:
    """Each goal: the measured value and whether it is met (None if not measured)."""
    results = {}
    for goal, (run, key, target) in GOALS.items():
        value = benchmarks.get(run, {}).get(key)
        results[goal] = {
            "target": target,
            "value": value,
            "met": None if value is None else value >= target,
        }
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Install, test and benchmark on a GPU/TPU host; write one JSON report.",
        epilog="Exit status: 0 passed, 1 a step failed, 2 no GPU or TPU found. "
        "See docs/accelerators.md.",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=REPO / "runs/accelerator_check/report.json",
        help="the JSON report; the benchmarks' JSON files go next to it",
    )
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        default=REPO / "wheelhouse",
        help="wheels for an offline host (make wheelhouse); used if present",
    )
    parser.add_argument(
        "--venv", type=Path, default=REPO / ".venv-accelerator", help="the environment it makes"
    )
    parser.add_argument("--python", default=sys.executable, help="the host's Python")
    parser.add_argument(
        "--rows_per_device",
        type=int,
        default=128,
        help="benchmark rows per device (x --length tokens)",
    )
    parser.add_argument("--length", type=int, default=256, help="tokens per benchmark row")
    parser.add_argument("--steps", type=int, default=20, help="timed benchmark train steps")
    parser.add_argument(
        "--compare_xla",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also benchmark base with XLA attention (no decoding)",
    )
    parser.add_argument(
        "--pipeline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the input pipeline on one core",
    )
    parser.add_argument(
        "--dry_run", "--dry-run", action="store_true", help="print what would run here, run nothing"
    )
    parser.add_argument("--install-missing-from", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--link-site-packages", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(args, host: dict | None, hardware: dict) -> tuple[str | None, bool, str | None]:
    """(backend, host keeps its JAX, extra to install): backend None = no accelerator."""
    if host and host["backend"] in ("gpu", "tpu"):
        return host["backend"], True, None
    extra = extra_for(hardware)
    backend = {"cuda12": "gpu", "cuda13": "gpu", "tpu": "tpu"}.get(extra or "")
    return backend, False, extra


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install_missing_from:
        install_missing_from(args.install_missing_from)
        return 0
    if args.link_site_packages:
        link_site_packages(args.link_site_packages)
        return 0
    started = time.monotonic()
    host = probe(args.python)
    hardware = detect_hardware()
    backend, keep_host_jax, extra = plan(args, host, hardware)
    report: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "host_jax": host,
            "hardware": hardware,
        },
        "steps": {},
    }
    if backend is None:
        seen = f"JAX {host['jax']} sees only {host['backend']}" if host else "no JAX in this Python"
        print(
            f"No GPU or TPU found ({seen}; no nvidia-smi GPUs; no /dev/accel*): nothing to check. "
            "Run `make accelerator-check` on a GPU or TPU host."
        )
        return 2
    how = "the host's JAX" if keep_host_jax else f"a fresh venv with the '{extra}' extra"
    print(f"Accelerator: {backend} ({hardware or host}); environment: {how} in {args.venv}.")
    install = install_commands(args, keep_host_jax, extra)
    report_dir = args.report.parent
    benchmarks = benchmark_commands(args, (host or {}).get("device_count", 1), report_dir)
    if args.dry_run:
        for command in install:
            print("would run:", " ".join(command))
        print("would run: pytest -m accelerator; then:")
        for command in benchmarks.values():
            print("would run:", " ".join(command))
        return 0

    report_dir.mkdir(parents=True, exist_ok=True)
    ok = True
    for i, command in enumerate(install):
        ok &= run_step(report, f"install_{i}", command, timeout=900)["returncode"] == 0
        if not ok:
            if not keep_host_jax:
                print(
                    f"Installing the '{extra}' extra needs a package index. On an offline host, "
                    "preinstall JAX with its CUDA plugin or libtpu (the wheelhouse has no JAX)."
                )
            break
    env = device_env(backend)
    if ok:  # recorded, not fatal: a host's own packages may disagree among themselves
        run_step(report, "pip_check", [venv_python(args.venv), "-m", "pip", "check"], timeout=120)
    venv_info = probe(venv_python(args.venv), VERSIONS, env) if ok else None
    report["environment"] = venv_info
    if not venv_info or venv_info["backend"] != backend:
        print(f"The environment in {args.venv} does not see the {backend}: see the steps above.")
        return finish(report, args.report, started, ok=False)
    print(venv_info.pop("environment_info"))
    print(json.dumps(venv_info, indent=2))
    junit = report_dir / "accelerator-tests.xml"
    tests = run_step(
        report,
        "tests",
        [
            venv_python(args.venv),
            "-m",
            "pytest",
            "-q",
            "-m",
            "accelerator",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "tests/test_accelerator.py",  # where the marked tests live (the other test
            #                               files import packages the wheelhouse leaves out)
        ],
        timeout=300,
        env=env,
    )
    report["tests"] = junit_counts(junit)
    ok &= tests["returncode"] == 0
    benchmarks = benchmark_commands(args, venv_info["device_count"], report_dir)
    report["benchmarks"] = {}
    for name, command in benchmarks.items():
        step = run_step(report, f"benchmark_{name}", command, timeout=240, env=env)
        figures_file = report_dir / f"{name}.json"
        if step["returncode"] == 0 and figures_file.exists():
            figures = json.loads(figures_file.read_text())
            figures["tokens_per_s_per_device"] = figures["tokens_per_s"] / venv_info["device_count"]
            report["benchmarks"][name] = figures
        else:
            ok = False
    if args.pipeline:
        step = run_step(report, "input_pipeline", [
            venv_python(args.venv), "scripts/pipeline_throughput.py", "--config=configs/default.py",
            f"--batch_size={args.rows_per_device}", f"--max_length={args.length}",
            "--rounds=1", "--process_counts=1", "--shard_counts=0", "--num_batches=50",
            f"--workdir={report_dir / 'pipeline'}", f"--prepared_dir={report_dir / 'data'}",
        ], timeout=180, env=env)  # fmt: skip
        ok &= step["returncode"] == 0
        report["input_pipeline"] = pipeline_figures(step.pop("output"), report["benchmarks"])
    report["goals"] = goals(report["benchmarks"])
    return finish(report, args.report, started, ok)


def finish(report: dict, path: Path, started: float, ok: bool) -> int:
    report["total_seconds"] = round(time.monotonic() - started, 1)
    report["passed"] = ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nReport: {path} ({report['total_seconds']} s, {'passed' if ok else 'FAILED'}).")
    for goal, result in report.get("goals", {}).items():
        print(f"  {goal}: {result['value']} (goal >= {result['target']}, met: {result['met']})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
