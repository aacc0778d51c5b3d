"""Writing a benchmark's result file: JSON whose paths are relative to the project, so it reads the same on any machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def project_relative(value: Any, root: Path = ROOT) -> Any:
    """The value with this checkout's absolute path taken out of every string (`/x/main/saves/a` -> `saves/a`),
    and the folder beside it, where the shared datasets are, written from the project (`/x/shared/d` -> `../shared/d`)."""
    if isinstance(value, str):
        return value.replace(f"{root}/", "").replace(str(root), ".").replace(f"{root.parent}/", "../")
    if isinstance(value, dict):
        return {k: project_relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [project_relative(v, root) for v in value]
    return value


def write_result(path: Path, record: dict) -> None:
    Path(path).write_text(json.dumps(project_relative(record), indent=2) + "\n")


def machine() -> dict:
    """The machine a result was measured on, with what decides CPU speed: the vector units and bf16 support.

    The same 2-core host has come as AVX-512 with bf16 and as AVX2 without it; without this record a result
    measured in fp32 on the second reads as a slowdown of the code (the cause of a wrong claim once).
    """
    import os
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
