"""The layering in pyproject.toml ([tool.importlinter]) holds: no module imports a higher layer, no circles."""

import subprocess
import sys
from pathlib import Path

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
