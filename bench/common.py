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


def method_args(method: str, root, base: str = "tiny") -> list:
    """How a bench runs a method on a bundled base (tiny, tiny-xl): its shipped recipe for that base when there
    is one, else the plain command (the method's preset or paper settings, as `erase unlearn --method M`
    chooses)."""
    from pathlib import Path

    recipe = Path(root) / "recipes" / f"{base}-digit-{method}.yaml"
    args = ["--recipe", str(recipe)] if recipe.is_file() else ["--method", method]
    return args + (["--base", base] if base != "tiny" else [])


def is_guard(method: str) -> bool:
    """Whether `erase unlearn --method M` writes a guard (sampling time) rather than a LoRA delta."""
    from erasecli.methods import get_method

    return get_method(method).guard


def model_args(method: str, folder) -> list:
    """How evaluate / attack take what `erase unlearn --method M --out folder` wrote: --delta or --guard."""
    return ["--guard" if is_guard(method) else "--delta", str(folder)]


def output_file(method: str, folder):
    """The file whose size is the method's delta size (a guard's tensors for a guard)."""
    from pathlib import Path

    from erasecli.delta import GUARD_FILE, LORA_FILE

    return Path(folder) / (GUARD_FILE if is_guard(method) else LORA_FILE)
