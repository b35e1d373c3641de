"""The layering in pyproject.toml ([tool.importlinter]) holds: no module imports a higher layer, no circles."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_import_linter_contracts_are_kept():
    res = _lint(ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_the_contract_catches_a_lower_layer_importing_api(tmp_path):
    """The linter is not vacuous: the same contract breaks when a low module imports erasecli.api."""
    import shutil

    pkg = tmp_path / "erasecli"
    shutil.copytree(ROOT / "erasecli", pkg, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    (pkg / "concepts.py").write_text((pkg / "concepts.py").read_text() + "\nfrom erasecli import api  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    exe = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(exe), "--config", str(tmp_path / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path),
                                                                           "PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and "erasecli.concepts -> erasecli.api" in res.stdout, res.stdout[-2000:]


# What deciding "SD or SDXL" by hand looks like: a pipeline's class name, an SDXL-only config key, a base name.
# The kind object itself; the trainer that builds the bundled pipelines; the registry's description strings.
KIND_OWNERS = {"diffusion/kinds.py", "models/train_tiny.py"}


def test_only_the_base_kind_decides_sd_or_sdxl():
    """Every 'is this SDXL (or Flux)' goes through erasecli.diffusion.kinds: no other module compares a pipeline's
    class name, reads the denoiser config's SDXL or Flux key, or tests a base's name for 'sdxl' (strings in
    messages aside)."""
    import ast

    names = {"StableDiffusionXLPipeline", "StableDiffusionPipeline", "FluxPipeline"}
    keys = {"addition_embed_type", "axes_dims_rope"}

    def suspicious(node) -> str | None:
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Constant) and side.value in names:
                    return f"compares with {side.value!r}"
                if isinstance(side, ast.Attribute) and side.attr in ("__name__", "xl"):
                    return f"compares .{side.attr}"
        if isinstance(node, ast.Attribute) and node.attr == "xl":
            return "reads .xl"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if node.func.attr in ("startswith", "endswith") and any("sdxl" in a or "xl" == a for a in args):
                return f"{node.func.attr}({args[0]!r})"
            if node.func.attr == "get" and keys & set(args):
                return f"reads {(keys & set(args)).pop()}"
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and node.left.value in keys:
            return f"tests for {node.left.value}"
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in keys:
            return f"reads {node.slice.value}"
        return None

    found = []
    for f in sorted((ROOT / "erasecli").rglob("*.py")):
        rel = f.relative_to(ROOT / "erasecli").as_posix()
        if rel in KIND_OWNERS:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            why = suspicious(node)
            if why:
                found.append(f"{rel}:{node.lineno}: {why}")
    assert not found, "decide the base kind with erasecli.diffusion.kinds.kind_of:\n" + "\n".join(found)


def test_the_base_kind_check_is_not_vacuous(tmp_path):
    """The check above fires on the kind of test the seams issue removed (registry.Base.xl by class name)."""
    import ast

    src = 'def xl(pipe):\n    return type(pipe).__name__ == "StableDiffusionXLPipeline"\n'
    assert any(isinstance(n, ast.Compare) for n in ast.walk(ast.parse(src)))
    f = ROOT / "erasecli" / "_kind_probe.py"
    f.write_text(src)
    try:
        with pytest.raises(AssertionError, match="_kind_probe.py:2"):
            test_only_the_base_kind_decides_sd_or_sdxl()
    finally:
        f.unlink()
