"""The `erase` command line: parse, resolve the recipe, call one api function, print.

Heavy imports (torch, diffusers) happen inside the api calls, so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from erasecli import __version__
from erasecli.errors import EraseError, UsageError

app = typer.Typer(
    name="erase",
    help="Erase concepts (a style, an object, a digit) from text-to-image diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool):
    if value:
        print(f"erasecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Erase concepts from text-to-image diffusion models. Runs on the bundled tiny base by default."""


# Options shared by the commands (typer reads them as defaults; one definition, one help text).
BASE = typer.Option(None, "--base", help="tiny (default), tiny-xl, tiny-canvas, tiny-flux, sd-1.4, sd-1.5, "
                    "sd-2.1-base, sdxl-1.0, flux-schnell, flux-dev, a local diffusers folder (SD, SDXL or Flux) or a "
                    "hub id.")
DELTAS = typer.Option([], "--delta", help="A delta folder from `erase unlearn` (repeatable).")
GUARDS = typer.Option([], "--guard", help="A guard folder from `erase unlearn --method sld|safree` (a sampling-time "
                      "erasure; repeatable where each model is its own column).")
RECIPE = typer.Option(None, "--recipe", help="A YAML recipe (see recipes/).")
SET = typer.Option([], "--set", help="Override a recipe field, e.g. --set sample.eta=0.5 (repeatable).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace --out if it exists.")
FORCE = typer.Option(False, "--force", help="Use deltas made for another base.")
DEVICE = typer.Option(None, "--device", help="cuda, mps or cpu. [default: best available]")
DTYPE = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, else fp32), fp32, fp16, bf16.")
JSON = typer.Option(False, "--json", help="Print one JSON document to stdout.")


def _load_base_with_status(console, name: str, device, dtype):
    from erasecli.models.registry import load_base

    with console.status(f"loading base {name}"):
        return load_base(name, device=device, dtype=dtype)


def _stderr_console():
    from rich.console import Console

    from erasecli.dist import launched, rank_env

    return Console(stderr=True, quiet=launched() and rank_env() != 0)  # one process reports


def _progress(console, label: str | None = None, losses: bool = False):
    """The commands' progress bar on stderr: a label (fixed, or each task's description), bar, count, time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn(label or "{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if losses:
        columns.append(TextColumn("{task.fields[losses]}"))
    return Progress(*columns, console=console, transient=True)


def _read_prompts(prompts: list[str], prompts_file: Optional[str]) -> list[str]:
    out = list(prompts or [])
    if prompts_file is not None:
        if prompts_file == "-":
            text = sys.stdin.read()
        else:
            p = Path(prompts_file)
            if not p.is_file():
                raise UsageError(f"prompts file {p} does not exist", hint="one prompt a line; use - for stdin")
            text = p.read_text()
        out += [line.strip() for line in text.splitlines() if line.strip()]
    return out


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _concepts(names) -> dict:
    """Repeated --concept: the first is concept.name, the others concept.also (erased into the same delta)."""
    names = list(dict.fromkeys(names))
    return {"name": names[0], "also": names[1:]} if names else {}


def load_recipe_cli(path, overrides, **values):
    """The recipe from defaults < preset (recipe key `defaults`) < file < command-line flags < --set."""
    from erasecli import api

    return api.load_recipe(path, overrides, **values)


@app.command()
def sample(
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="A prompt (repeatable)."),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", help="One prompt a line; - reads stdin."),
    base: Optional[str] = BASE,
    delta: List[Path] = DELTAS,
    guard: List[Path] = GUARDS,
    n: int = typer.Option(4, "-n", help="Images per prompt."),
    seed: Optional[int] = typer.Option(None, "--seed", help="First seed; image i uses seed + i. [default: 0]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps. [default: recipe's, 25]"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass."),
    recipe: Optional[Path] = RECIPE,
    set_: List[str] = SET,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for PNGs, grids, manifest.jsonl."),
    overwrite: bool = OVERWRITE,
    force: bool = FORCE,
    device: Optional[str] = DEVICE,
    dtype: str = DTYPE,
    as_json: bool = JSON,
):
    """Generate images from a base, optionally with deltas (and a guard) applied."""
    from erasecli import api

    prompts = _read_prompts(prompt, prompts_file)
    if out is None and not as_json:
        raise UsageError("nowhere to put the images", hint="pass --out DIR (or --json for the records only)")
    r = load_recipe_cli(recipe, set_, base=base,
                        sample=_drop_none({"seed": seed, "steps": steps, "guidance": guidance, "batch_size": batch_size}))
    guards = [str(g) for g in guard]
    api.check_sample(r, prompts=prompts, n=n, deltas=[str(d) for d in delta], out=out, overwrite=overwrite,
                     guards=guards)
    console = _stderr_console()
    loaded = _load_base_with_status(console, r.base, device, dtype)
    with _progress(console, "sampling") as bar:
        task = bar.add_task("sample", total=len(prompts) * n)
        records = api.sample(r, prompts=prompts, n=n, deltas=[str(d) for d in delta], out=out, overwrite=overwrite,
                             force=force, base=loaded, guards=guards,
                             progress=lambda done, total: bar.update(task, completed=done))
    if as_json:
        print(json.dumps({"out": str(out) if out else None, "base": r.base, "deltas": [str(d) for d in delta],
                          "guards": guards,
                          "images": [{"prompt": x.prompt, "seed": x.seed, "file": x.file} for x in records]}))
    else:
        console.print(f"wrote {len(records)} images and {len(prompts)} grid(s) to {out}")


@app.command()
def evaluate(
    concept: List[str] = typer.Option([], "--concept", help='The erased concept, e.g. "digit 3", "red" or '
                                      '(tiny-canvas) "style dotted"; repeat it for a delta that erased several '
                                      '(UA per concept).'),
    base: Optional[str] = BASE,
    delta: List[Path] = DELTAS,
    guard: List[Path] = GUARDS,
    metrics: List[str] = typer.Option([], "--metrics", help="Metric names, comma-separated or repeated. "
                                      "[default: ua,ira,cra,clip_score,fid,kid]"),
    samples_per_prompt: Optional[int] = typer.Option(None, "--samples-per-prompt", help="Images per prompt."),
    seed: Optional[int] = typer.Option(None, "--seed", help="First seed; image i of a prompt uses seed + i."),
    recipe: Optional[Path] = RECIPE,
    set_: List[str] = SET,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for images, grids, report.json, report.html."),
    overwrite: bool = OVERWRITE,
    force: bool = FORCE,
    device: Optional[str] = DEVICE,
    dtype: str = DTYPE,
    as_json: bool = JSON,
):
    """Measure an erasure: UA, IRA, CRA, CLIP score, FID/KID of the base and each delta or guard, side by side."""
    from erasecli import api

    names = [m.strip() for x in metrics for m in x.split(",") if m.strip()] or None
    r = load_recipe_cli(recipe, set_, base=base, concept=_concepts(concept),
                        eval=_drop_none({"metrics": names, "samples_per_prompt": samples_per_prompt, "seed": seed}))
    guards = [str(g) for g in guard]
    api.check_evaluate(r, deltas=[str(d) for d in delta], out=out, overwrite=overwrite, force=force, guards=guards)
    from erasecli.eval.report import rich_table

    console = _stderr_console()
    loaded = _load_base_with_status(console, r.base, device, dtype)
    with _progress(console) as bar:
        task = bar.add_task("sampling", total=None)
        report = api.evaluate(r, deltas=[str(d) for d in delta], out=out, overwrite=overwrite, force=force,
                              base=loaded, guards=guards, progress=lambda what, done, total: bar.update(
                                  task, description=what, completed=done, total=total))
    if as_json:
        print(json.dumps(report))
    else:
        from rich.console import Console

        Console().print(rich_table(report))
        if out is not None:
            console.print(f"wrote images, grids, report.json and report.html to {out}")


@app.command()
def attack(
    concept: Optional[str] = typer.Option(None, "--concept", help='The erased concept, e.g. "digit 3".'),
    base: Optional[str] = BASE,
    delta: List[Path] = DELTAS,
    guard: List[Path] = GUARDS,
    attacks: List[str] = typer.Option([], "--attacks", help="Attacks, comma-separated or repeated: paraphrase, "
                                      "prompt, inversion. [default: all three]"),
    budget: Optional[float] = typer.Option(None, "--budget", help="Scales every attack's steps and restarts "
                                           "(> 0). [default: 1.0]"),
    recipe: Optional[Path] = RECIPE,
    set_: List[str] = SET,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the adversarial prompts, embeddings, "
                                       "images, attack.json and report.html."),
    overwrite: bool = OVERWRITE,
    force: bool = FORCE,
    device: Optional[str] = DEVICE,
    dtype: str = DTYPE,
    as_json: bool = JSON,
):
    """Attack an erasure: does the concept come back under paraphrases, an optimised prompt prefix
    (UnlearnDiffAtk) or concept inversion? Prints pre-ASR and ASR per attack for each delta or guard (the base
    alone when neither is given)."""
    from erasecli import api

    names = [a.strip() for x in attacks for a in x.split(",") if a.strip()] or None
    if names:
        from erasecli.attacks import get_attack

        for n in names:  # before the recipe: an unknown name is a usage error that lists the valid ones
            get_attack(n)
    if budget is not None and not budget > 0:
        raise UsageError(f"--budget must be > 0, got {budget}", hint="e.g. --budget 0.5 for a quicker, weaker attack")
    r = load_recipe_cli(recipe, set_, base=base, concept=_drop_none({"name": concept}),
                        attack=_drop_none({"attacks": names, "budget": budget}))
    guards = [str(g) for g in guard]
    api.check_attack(r, deltas=[str(d) for d in delta], out=out, overwrite=overwrite, force=force, guards=guards)
    from erasecli.eval.report import rich_attack_table

    console = _stderr_console()
    loaded = _load_base_with_status(console, r.base, device, dtype)
    with _progress(console) as bar:
        task = bar.add_task("attacking", total=None)
        report = api.attack(r, deltas=[str(d) for d in delta], out=out, overwrite=overwrite, force=force,
                            base=loaded, guards=guards, progress=lambda what, done, total: bar.update(
                                task, description=what, completed=done, total=total))
    if as_json:
        print(json.dumps(report))
    else:
        from rich.console import Console

        Console().print(rich_attack_table(report))
        if out is not None:
            console.print(f"wrote adversarial prompts, embeddings, images, attack.json and report.html to {out}")


@app.command()
def unlearn(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="siss (default), adaptive-siss, ppo-alpha, "
                                         "esd, critic-rl, ac, sa, receler, ant; uce, rece, mace (closed form, seconds); sld, safree "
                                         "(guards: no weights change). Without --recipe on the tiny base a method starts "
                                         "from its shipped tiny preset (recipes/tiny-digit-<method>.yaml, the "
                                         "colour one where there is one); elsewhere from its paper settings. "
                                         "--set defaults=paper|<preset> chooses; the recipe.yaml written beside "
                                         "the delta names the one used."),
    concept: List[str] = typer.Option([], "--concept", help='What to erase, e.g. "digit 3", "style dotted" '
                                      '(tiny-canvas) or "van gogh"; '
                                      "repeat it to erase several into one delta."),
    concepts_file: Optional[Path] = typer.Option(None, "--concepts-file", help="Batch job: erase each concept "
                                                 "in this file (one per line) into OUT/<concept>/; done ones are "
                                                 "skipped, stopped ones resume, failures are listed at the end."),
    together: bool = typer.Option(False, "--together", help="With --concepts-file: erase all its concepts into "
                                  "one delta at OUT instead of one delta each."),
    shard: Optional[str] = typer.Option(None, "--shard", help="With --concepts-file: I/N takes every N-th concept "
                                        "from the I-th (I counts from 0), e.g. --shard $SLURM_ARRAY_TASK_ID/8 in a "
                                        "job array; rerunning a shard skips its done concepts."),
    base: Optional[str] = BASE,
    recipe: Optional[Path] = RECIPE,
    set_: List[str] = SET,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the delta, its log and plot (with "
                                       "--concepts-file: the parent of one folder per concept)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps. [default: recipe's, 200]"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of the adapter."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run from its <out>.ckpt "
                                          "folder (recipe and step come from it)."),
    critic: Optional[Path] = typer.Option(None, "--critic", help="critic-rl: a critic from `erase train-critic` "
                                          "(without it, critic-rl trains one first)."),
    overwrite: bool = OVERWRITE,
    device: Optional[str] = DEVICE,
    dtype: str = DTYPE,
    as_json: bool = JSON,
):
    """Erase a concept: train a LoRA delta with an unlearning method (checkpoints every train.checkpoint_every
    steps and on Ctrl-C; --resume continues)."""
    from erasecli import api
    from erasecli.errors import RecipeError

    if concepts_file is not None and (concept or resume is not None):
        raise UsageError("--concepts-file runs a batch, so it takes neither --concept nor --resume",
                         hint="list the concepts in the file; stopped concepts resume on their own when rerun")
    if concepts_file is None and (together or shard is not None):
        raise UsageError(f"{'--together' if together else '--shard'} is for --concepts-file",
                         hint="add --concepts-file FILE, or repeat --concept to erase several into one delta")
    if together and shard is not None:
        raise UsageError("--together erases every concept into one delta, so it cannot be split with --shard",
                         hint="drop --shard, or drop --together to write one delta per concept")
    shard_of = _parse_shard(shard) if shard is not None else None
    if resume is not None:
        given = [name for name, v in (("--method", method), ("--concept", concept or None), ("--base", base),
                                      ("--recipe", recipe), ("--steps", steps), ("--lr", lr), ("--seed", seed),
                                      ("--critic", critic))
                 if v is not None] + (["--set"] if set_ else [])
        if given:
            raise UsageError(f"--resume takes the recipe from the checkpoint, so {', '.join(given)} cannot change it",
                             hint="drop those options, or start a new run with another --out")
        r = None
    else:
        from erasecli.recipes import METHOD_NAMES

        if method is not None and method not in METHOD_NAMES:
            raise RecipeError(f"unknown method {method!r}", hint="valid methods: " + ", ".join(METHOD_NAMES))
        from erasecli.recipes import load_recipe

        file_method = load_recipe(recipe, []).method if recipe is not None else ""
        if method is not None and file_method and method != file_method:
            raise RecipeError(f"recipe {recipe} is for method {file_method!r}, not {method!r}",
                              hint=f"drop --method, or use a recipe for {method} (recipes/*-{method}.yaml)")
        names = concept
        if concepts_file is not None and together:
            from erasecli import batch

            names = batch.read_concepts_file(concepts_file)
            concepts_file = None
        r = load_recipe_cli(recipe, set_, base=base, method=method or file_method or "siss",
                            concept=_concepts(names),
                            train=_drop_none({"steps": steps, "lr": lr, "seed": seed}),
                            critic=_drop_none({"path": str(critic) if critic is not None else None}))
        from erasecli.methods import get_method

        if critic is not None and not get_method(r.method or "siss").uses_critic:
            from erasecli.methods import METHODS

            takes = ", ".join(n for n, m in METHODS.items() if m.uses_critic)
            raise UsageError(f"--critic is for --method {takes}", hint=f"add --method {takes}, or drop --critic")
        if concepts_file is not None:
            return _unlearn_batch(api, r, concepts_file, out, overwrite, device, dtype, as_json, shard_of)
        api.check_unlearn(r, out=out, overwrite=overwrite)
    console = _stderr_console()
    name = r.base if r is not None else "from checkpoint"
    loaded = None
    if r is not None:
        loaded = _load_base_with_status(console, r.base, device, dtype)
    with _progress(console, losses=True) as bar:
        data_task = bar.add_task("sampling data", total=None, losses="")
        train_task = bar.add_task("training", total=None, losses="", visible=False)
        keys = ("loss", "L_x", "L_a", "L_r", "L_esd", "L_ac", "lambda", "reward_forget", "reward_retain")

        def on_step(k, total, row):
            shown = "  ".join(f"{key} {row[key]:.4g}" for key in keys if key in row)
            bar.update(train_task, completed=k, total=total, losses=shown, visible=True)

        result = api.unlearn(r, out=out, overwrite=overwrite, resume=resume, device=device, dtype=dtype, base=loaded,
                             data_progress=lambda done, total: bar.update(data_task, completed=done, total=total),
                             progress=on_step)
    if result["delta"] is None:  # not the main process of several: the main one reports
        return
    if as_json:
        print(json.dumps(result))
    elif result["delta"].get("kind") == "guard":
        g, named = result["delta"]["guard"], " ".join(f"--concept {json.dumps(c)}" for c in result["delta"]["concepts"])
        what = (f"preset {g['preset']}, safety concept {g['concept_text']!r}" if "preset" in g
                else f"concept subspace of {', '.join(map(repr, g.get('keywords', [])))}")
        console.print(f"wrote guard to {result['out']} ({result['delta']['method']}, {what}; no weights change: "
                      "pass it with --guard)")
        console.print(f"next: erase evaluate {named} --base {result['delta']['base']} --guard {result['out']}")
    else:
        s = result["summary"]
        defaults = (r.defaults if r is not None else "") or "paper"
        settings = f"recipe {recipe}" if recipe is not None and defaults == "paper" else f"defaults {defaults}"
        trunc = s.get("truncation")
        rank_note = (f" (truncated: max relative error {trunc['max_relative_error']:.3g})" if trunc else "")
        if s.get("pooled"):
            rank_note += f", pooled path edited (residual {s['pooled']['residual']:.3g})"
        work = (f"closed-form edit in {s['edit_seconds']:.2f} s, LoRA rank {s['rank']}{rank_note}" if "edit_seconds" in s else
                f"{s['steps']} steps, {s['train_seconds']:.1f} s training, "
                f"{s['data']['sampling_seconds']:.1f} s sampling data")
        console.print(f"wrote delta to {result['out']} ({result['delta']['method']}, {settings}, {work}; "
                      f"base {name if r is None else r.base})")
        if s.get("stopped_early"):
            console.print(f"stopped early at step {s['stopped_early']['step']}: the forget reward's recent mean "
                          f"{s['stopped_early']['reward_forget_mean']:.3f} reached critic.stop_reward")
        if s.get("reward_forget"):
            rf = s["reward_forget"]
            what = "minus the concept score" + (", plus the kept attribute's" if r is not None and r.critic.keep_weight
                                                else "")
            console.print(f"forget reward ({what}): mean {rf['first_mean']:.3f} over the first "
                          f"{rf['first_steps']} steps, {rf['last_mean']:.3f} over the last {rf['last_steps']}")
        named = " ".join(f"--concept {json.dumps(c)}" for c in result["delta"]["concepts"])
        console.print(f"next: erase evaluate {named} "
                      f"--base {result['delta']['base']} --delta {result['out']}")


def _parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} is not I/N", hint="e.g. --shard 0/4 (I counts from 0 to N-1)") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: I must be 0 to {n - 1} and N at least 1",
                         hint="I counts from 0; with a job array --array=1-N pass $((SLURM_ARRAY_TASK_ID-1))/N")
    return i, n


def _unlearn_batch(api, r, concepts_file: Path, out, overwrite: bool, device, dtype, as_json: bool,
                   shard=None) -> None:
    """`erase unlearn --concepts-file`: one line per concept on stderr, failures listed at the end (exit 1)."""
    from erasecli import batch
    from erasecli.methods import get_method
    from erasecli.models.registry import resolve_base

    concepts = batch.read_concepts_file(concepts_file)
    if shard is not None:
        concepts = batch.shard_concepts(concepts, *shard)
        if not concepts:
            print(f"shard {shard[0]}/{shard[1]} of {concepts_file} holds no concepts: nothing to do", file=sys.stderr)
            return
    if out is None:
        raise UsageError("nowhere to put the deltas", hint="pass --out DIR (one folder per concept goes inside)")
    get_method(r.method).check(r)
    resolve_base(r.base)
    console = _stderr_console()
    n = len(concepts)
    with _progress(console) as bar:
        task = bar.add_task("training", total=None, visible=False)

        def on_event(concept, status, info):
            where = f"[{concepts.index(concept) + 1}/{n}] {concept}"  # concepts are unique (read_concepts_file)
            if status in ("starting", "resuming"):
                bar.update(task, description=where, completed=0, visible=True)
                return
            detail = {"failed": f"FAILED: {info.get('error', '')}", "skipped": "skipped (already done)"}.get(
                status, f"{status} in {info.get('summary', {}).get('train_seconds', 0):.1f} s")
            console.print(f"{where}: {detail}", markup=False, highlight=False, soft_wrap=True)

        results = batch.unlearn_batch(r, concepts, out=out, overwrite=overwrite, device=device, dtype=dtype,
                                    on_event=on_event, summary_name=batch.batch_summary_name(shard),
                                    progress=lambda k, total, row: bar.update(task, completed=k, total=total))
    failed = [x for x in results if x["status"] == "failed"]
    if as_json:
        print(json.dumps({"out": str(out), "results": results, "failed": len(failed)}))
    if failed:
        listing = "; ".join(f"{x['concept']!r}: {x['error']}" for x in failed)
        raise EraseError(f"{len(failed)} of {n} concepts failed: {listing}",
                         hint=f"fix them and rerun the same command; the {n - len(failed)} done are skipped")
    if not as_json:
        console.print(f"all {n} concepts done in {out} (summary: {Path(out) / batch.batch_summary_name(shard)})")


@app.command("train-critic")
def train_critic(
    concept: List[str] = typer.Option([], "--concept", help='The concept critic-rl will erase, e.g. "digit 3"; '
                                      'repeat it for several erased together.'),
    base: Optional[str] = BASE,
    reward: Optional[str] = typer.Option(None, "--reward", help="clip (default) or classifier (tiny base only)."),
    recipe: Optional[Path] = RECIPE,
    set_: List[str] = SET,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the critic, its report and plot."),
    overwrite: bool = OVERWRITE,
    device: Optional[str] = DEVICE,
    dtype: str = DTYPE,
    as_json: bool = JSON,
):
    """Train the timestep-aware critic V(x_t, t, c) that critic-rl uses: regress the terminal reward of base
    trajectories on every noisy step; report its explained variance per timestep."""
    from erasecli import api
    from erasecli.errors import RecipeError
    from erasecli.recipes import REWARD_NAMES

    if reward is not None and reward not in REWARD_NAMES:
        raise RecipeError(f"unknown reward {reward!r}", hint="valid rewards: " + ", ".join(REWARD_NAMES))
    r = load_recipe_cli(recipe, set_, base=base, concept=_concepts(concept),
                        method="critic-rl" if recipe is None else None,  # the same preset as unlearn's
                        critic=_drop_none({"reward": reward}))
    api.check_train_critic(r, out=out, overwrite=overwrite)
    console = _stderr_console()
    loaded = _load_base_with_status(console, r.base, device, dtype)
    with _progress(console) as bar:
        task = bar.add_task("sampling trajectories", total=None)
        result = api.train_critic(r, out=out, overwrite=overwrite, base=loaded, progress=lambda what, done, total:
                                  bar.update(task, description=what, completed=done, total=total))
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    rep = result["report"]
    from erasecli.concepts import concept_names, joined_name

    table = Table(title=f"critic for {joined_name(concept_names(r))!r} ({rep['reward']} reward, {rep['input']} input), "
                        f"{rep['held_out']} held-out trajectories")
    for col in ("t", "explained variance", "within forget/retain", "RMSE"):
        table.add_column(col, justify="right")
    for row in rep["per_timestep"]:
        table.add_row(str(row["t"]), f"{row['explained_variance']:.3f}", f"{row['within_group_ev']:.3f}",
                      f"{row['rmse']:.4f}")
    from rich.console import Console

    Console().print(table)
    console.print(f"wrote critic to {result['out']} ({rep['sampling_seconds']:.1f} s sampling, "
                  f"{rep['fit_seconds']:.1f} s fitting); use it with erase unlearn --method critic-rl "
                  f"--critic {result['out']}")


@app.command()
def export(
    delta: Optional[Path] = typer.Option(None, "--delta", help="A delta folder from `erase unlearn`."),
    fmt: str = typer.Option("kohya", "--format", help="kohya (a LoRA file for ComfyUI / webui) or merged (a full "
                            "diffusers pipeline folder with the delta fused into the UNet)."),
    base: Optional[str] = typer.Option(None, "--base", help="merged: the base to fuse into [default: the delta's]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the export."),
    overwrite: bool = OVERWRITE,
    force: bool = FORCE,
    dtype: str = typer.Option("fp32", "--dtype", help="merged: dtype of the saved weights (fp32, fp16, bf16)."),
    as_json: bool = JSON,
):
    """Export a delta for the tools people generate with: a kohya-layout LoRA, or a merged pipeline."""
    from erasecli.export import check_export, export_kohya, export_merged

    if delta is None:
        raise UsageError("no delta to export", hint="pass --delta DIR")
    check_export(str(delta), fmt, out, overwrite)
    console = _stderr_console()
    with console.status(f"exporting {delta} as {fmt}"):
        if fmt == "kohya":
            result = export_kohya(str(delta), out, overwrite=overwrite)
        else:
            result = export_merged(str(delta), out, base_name=base, dtype=dtype, force=force, overwrite=overwrite)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"wrote {fmt} export of {delta} to {result['out']}")


def main() -> None:
    """Entry point: one line per error, exit 1 (2 for usage errors); ERASE_DEBUG=1 shows tracebacks."""
    try:  # typer >= 0.20 vendors click and raises its own copies of click's exceptions
        from typer._click import exceptions as cx
    except ImportError:
        from click import exceptions as cx

    debug = os.environ.get("ERASE_DEBUG", "") not in ("", "0")
    from erasecli.dist import launched, rank_env

    if launched() and rank_env() != 0:  # under accelerate launch the main process prints the results
        sys.stdout = open(os.devnull, "w")
    # transformers announces at import that torchvision is absent (we do not use it): keep stderr for errors.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import signal

    def _terminated(signum, frame):  # SIGTERM (a scheduler's preemption) stops like Ctrl-C; training defers it
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminated)
    try:
        app(standalone_mode=False)
    except typer.Exit as e:  # --help, --version
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except cx.NoArgsIsHelpError as e:  # bare `erase`: the help, as a usage error
        print(e.format_message(), file=sys.stderr)
        sys.exit(2)
    except cx.ClickException as e:  # bad option, missing value, unknown command
        if debug:
            raise
        cmd = e.ctx.command_path if getattr(e, "ctx", None) else "erase"
        msg = " ".join(e.format_message().split())
        if "--method" in msg:  # `erase unlearn --method` with no value: say what the values are
            from erasecli.recipes import METHOD_NAMES

            msg += f" (valid methods: {', '.join(METHOD_NAMES)})"
        print(f"error: {msg} (see `{cmd} --help`)", file=sys.stderr)
        sys.exit(2)
    except EraseError as e:
        if debug:
            raise
        print(f"error: {e.one_line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug, or a library error we did not anticipate: still one line by default
        if debug:
            raise
        msg = " ".join(str(e).split())[:300]
        print(f"error: {type(e).__name__}: {msg} (rerun with ERASE_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
