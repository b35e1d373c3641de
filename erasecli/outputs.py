"""Output folders are built beside their destination and renamed into place, so none is half-written."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from erasecli.errors import OutputExistsError


def atomic_write(path, write: Callable[[Path], object], suffix: str = ".tmp", fsync: bool = False,
                 parents: bool = True) -> Path:
    """Write one file so that readers see the old file or the whole new one, never a part: `write(tmp)` fills a
    temp file beside `path` (same file system), which then replaces `path`. `suffix` ends the temp name, for
    writers that pick the format from it (PIL); `fsync` flushes it to disk first; `parents` creates missing
    folders. The temp file is removed if `write` fails."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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
