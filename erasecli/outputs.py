"""Output folders are built beside their destination and renamed into place, so none is half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from erasecli.errors import OutputExistsError


def check_out(out, overwrite: bool) -> None:
    """Refuse an existing output folder unless --overwrite; checked before any work starts."""
    if out is not None and Path(out).exists() and not overwrite:
        raise OutputExistsError(f"output folder {out} already exists", hint="pass --overwrite or another --out")


def staging_dir(out: Path) -> Path:
    """A temp folder beside `out` (same file system, so the final rename is atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a finished temp folder into place. An existing `out` is swapped out only after `tmp` is whole."""
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            check_out(out, overwrite)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
