"""Builds wheelhouse/: the wheels `make accelerator-check` installs on an offline GPU/TPU host.

    python scripts/build_wheelhouse.py [--dest=wheelhouse] [--python-version=3.12]

The host is expected to bring the JAX stack (jax + its CUDA plugin or libtpu, flax, optax,
orbax-checkpoint, sentencepiece, sacrebleu) with whatever those need. The wheelhouse holds the
rest of what the project and pytest need, at the versions of constraints.txt, for CPython 3.12
on manylinux x86-64; packages published only as source (pure Python) are built into wheels
here. Left out on purpose: pyarrow (55 MB), which tensorflow-datasets declares but our path
(array_record builders and data sources) never imports. Fails if the folder exceeds 60 MiB.
Reads pyproject.toml, constraints.txt and the metadata of the packages installed in the
running environment (`make wheelhouse` runs it in .venv, where constraints.txt is installed).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
HOST_STACK = ("jax", "flax", "optax", "orbax-checkpoint", "sentencepiece", "sacrebleu")
LEFT_OUT = {"pyarrow"}
BUILD_BACKEND = "setuptools>=77"  # pyproject's build-system: for the offline editable install
LIMIT_BYTES = 60 * 2**20
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "any")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...], environment: dict[str, str]) -> set[str]:
    """Canonical names of `roots` and everything they require (markers evaluated for
    `environment`, no extras beyond those named), from installed metadata."""
    seen: set[str] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        key = (name, tuple(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(
                f"{name} is not installed here; run this with the project's environment "
                "(make wheelhouse)."
            ) from None
        for line in requires:
            child = Requirement(line)
            extras = requirement.extras or {""}
            if child.marker is None or any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in extras
            ):
                todo.append(child)
    return {name for name, _ in seen}


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = version.strip()
    return pins


def wanted(python_version: str) -> list[str]:
    """name==version of every wheel to fetch."""
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = (*project["dependencies"], "pytest")  # what the accelerator check runs
    needed = closure(roots, environment) - closure(HOST_STACK, environment) - LEFT_OUT
    pins = pinned_versions()
    missing = sorted(needed - set(pins))
    if missing:
        raise SystemExit(f"{missing} are not pinned in constraints.txt; regenerate it.")
    return sorted(f"{name}=={pins[name]}" for name in needed) + [BUILD_BACKEND]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(REPO / "wheelhouse"), help="output folder")
    parser.add_argument("--python-version", default="3.12", help="target CPython version")
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    requirements = wanted(args.python_version)
    listing = dest / "requirements.txt"
    listing.write_text("\n".join(requirements) + "\n")
    platform_args = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    print(f"Fetching {len(requirements)} distributions for CPython {args.python_version}...")
    pip(
        "download", "--quiet", "--no-deps", "--prefer-binary", "--dest", str(dest),
        "--python-version", args.python_version, *platform_args, "-r", str(listing),
    )  # fmt: skip
    for source in sorted(dest.glob("*.tar.gz")) + sorted(dest.glob("*.zip")):
        print(f"Building a wheel of {source.name} (published only as source)...")
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(source))
        source.unlink()
    foreign = [p.name for p in dest.glob("*.whl") if not compatible(p.name, args.python_version)]
    if foreign:
        raise SystemExit(f"Wheels not for CPython {args.python_version}: {foreign}")
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"{dest}: {len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB.")
    if size > LIMIT_BYTES:
        raise SystemExit(
            f"{dest} is {size / 2**20:.1f} MiB, over the {LIMIT_BYTES >> 20} MiB limit."
        )


def compatible(wheel_name: str, python_version: str) -> bool:
    """Whether a wheel's tags fit CPython `python_version` on Linux x86-64."""
    *_, python_tag, abi_tag, platform_tag = wheel_name[: -len(".whl")].split("-")
    cp = "cp" + python_version.replace(".", "")
    pythons = python_tag.split(".")
    python_ok = cp in pythons or any(
        p in ("py3", "py2.py3") or p.startswith("py3") for p in pythons
    )
    python_ok |= abi_tag == "abi3"
    platform_ok = platform_tag == "any" or "x86_64" in platform_tag
    return python_ok and platform_ok


if __name__ == "__main__":
    main()
