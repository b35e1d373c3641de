"""Batch jobs: `erase unlearn --concepts-file`, one delta per concept with one loaded base, resumable and
shardable (`--shard I/N` for job arrays). Built on the library face (`erasecli.api`), above it in the layers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from erasecli import api
from erasecli.errors import UsageError


def read_concepts_file(path: Path) -> list[str]:
    """A batch job's concepts: one per line; blank lines and `#` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"concepts file {path} does not exist", hint="pass a text file with one concept per line")
    from erasecli.sampling import slug

    concepts = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    concepts = [c for c in concepts if c]
    if not concepts:
        raise UsageError(f"concepts file {path} lists no concepts", hint="write one concept per line")
    folders: dict[str, str] = {}
    for c in concepts:
        name = slug(c, 60)
        if name in folders:
            raise UsageError(f"concepts {folders[name]!r} and {c!r} in {path} would share the folder {name}",
                             hint="list each concept once")
        folders[name] = c
    return concepts


def shard_concepts(concepts: Sequence[str], index: int, count: int) -> list[str]:
    """`--shard I/N`: every N-th concept from the I-th (I from 0), so N jobs split a list with no coordination."""
    return list(concepts)[index::count]


def batch_summary_name(shard=None) -> str:
    """The batch summary's file: one per shard, so shards sharing --out never overwrite each other's."""
    return "batch.json" if shard is None else f"batch-{shard[0]}-of-{shard[1]}.json"


def batch_folder(out: Path, concept: str) -> Path:
    """Where `erase unlearn --concepts-file` puts one concept's delta."""
    from erasecli.sampling import slug

    return Path(out) / slug(concept, 60)


def _done(folder: Path, concept: str) -> bool:
    from erasecli.delta import LORA_FILE

    try:
        info = json.loads((folder / "delta.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / LORA_FILE).is_file() and info.get("concept") == concept


def unlearn_batch(recipe, concepts: Sequence[str], *, out: Path, overwrite: bool = False, base=None,
                  device: str | None = None, dtype: str = "auto",
                  on_event: Callable[[str, str, dict], None] | None = None, summary_name: str = "batch.json",
                  **unlearn_kw) -> list[dict]:
    """`erase unlearn --concepts-file`: erase each concept into `out/<slug>/` with one recipe and one loaded base.

    A concept whose folder already holds its delta is skipped (unless `overwrite`); one with a `<slug>.ckpt`
    checkpoint (a run that was stopped) resumes from it; one that fails is recorded and the batch goes on.
    Ctrl-C stops the batch after checkpointing the running concept. Returns one result per concept:
    {"concept", "out", "status": done|skipped|resumed|failed, "error"?, "summary"?}; also written to
    `out/batch.json`."""
    from dataclasses import replace

    from erasecli.errors import EraseError
    from erasecli.methods.loop import Interrupted, checkpoint_dir_for
    from erasecli.models.registry import load_base

    out = Path(out)
    results: list[dict] = []
    say = on_event or (lambda concept, status, info: None)
    for concept in concepts:
        folder = batch_folder(out, concept)
        res: dict = {"concept": concept, "out": str(folder)}
        ckpt = checkpoint_dir_for(folder)
        try:
            if _done(folder, concept) and not overwrite:
                res["status"] = "skipped"
                say(concept, "skipped", res)
                results.append(res)
                continue
            resume = ckpt if (ckpt / "state.pt").is_file() and not overwrite else None
            r = replace(recipe, concept=replace(recipe.concept, name=concept, also=()))
            if resume is None:
                api.check_unlearn(r, out=folder, overwrite=True)  # a bad concept fails before the base loads
            say(concept, "resuming" if resume else "starting", res)
            if base is None:
                base = load_base(recipe.base, device=device, dtype=dtype)
            done = api.unlearn(None if resume else r, out=folder, overwrite=True, resume=resume, base=base, **unlearn_kw)
            res.update(status="resumed" if resume else "done", summary=done["summary"])
        except Interrupted:
            raise
        except Exception as err:  # noqa: BLE001 - one concept's failure must not stop the others
            msg = err.one_line() if isinstance(err, EraseError) else f"{type(err).__name__}: {err}"
            res.update(status="failed", error=" ".join(msg.split())[:500])
        say(concept, res["status"], res)
        results.append(res)
    from erasecli.outputs import atomic_write_text

    atomic_write_text(out / summary_name, json.dumps(results, indent=2))
    return results
