"""What every benchmark line carries: the figure, its unit, the machine."""

from __future__ import annotations

import json
import os
import platform
import sys
import time


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__}


def emit(bench: str, metric: str, value, unit: str, **extra) -> None:
    line = {"bench": bench, "metric": metric, "value": value, "unit": unit, **extra,
            "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps(line), flush=True)
    sys.stdout.flush()


def method_args(method: str, root) -> list:
    """How a bench runs a method: its shipped tiny recipe when there is one, else the plain command (the
    method's tiny preset or paper settings, as `erase unlearn --method M` chooses)."""
    from pathlib import Path

    recipe = Path(root) / "recipes" / f"tiny-digit-{method}.yaml"
    return ["--recipe", str(recipe)] if recipe.is_file() else ["--method", method]
