"""Provenance recorded with every result: software versions, machine, accelerators, git commit.

Only names and versions are recorded, never environment variable values (tokens live there).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch", "transformers", "accelerate", "huggingface-hub", "datasets", "tokenizers", "safetensors",
    "scikit-learn", "numpy", "deepspeed", "flash-attn", "modal", "harness",
)  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parent.parent


def package_versions() -> dict[str, str | None]:
    """Installed version of each package of the stack; None when not installed."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _run(command: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


GIT_ENV = ("HARNESS_GIT_COMMIT", "HARNESS_GIT_DIRTY")  # set where the code runs without its .git (Modal)


def git_state() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it; from GIT_ENV where there is no .git."""
    commit = _run(["git", "rev-parse", "HEAD"], REPO_ROOT) if shutil.which("git") else None
    if commit is None and os.environ.get(GIT_ENV[0]):
        return {"commit": os.environ[GIT_ENV[0]], "dirty": os.environ.get(GIT_ENV[1]) == "1"}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], REPO_ROOT) if commit else None
    return {"commit": commit, "dirty": bool(status) if commit else None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerators() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        "gpus": [],
        "driver": None,
    }
    for index in range(info["gpu_count"]):
        props = torch.cuda.get_device_properties(index)
        info["gpus"].append(
            {"name": props.name, "memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}"}
        )
    if info["gpu_count"] and shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        info["driver"] = out.splitlines()[0] if out else None
    return info


def collect_environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "accelerators": accelerators(),
        "git": git_state(),
        "modal": {"gpu": os.environ.get("HARNESS_MODAL_GPU")} if os.environ.get("MODAL_TASK_ID") else None,
    }
