"""Reports of `erase evaluate`: a rich table, a JSON document, and a folder with images, grids and HTML."""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
from pathlib import Path

NAMES = {"ua": "UA", "ira": "IRA", "cra": "CRA", "cra_forget": "CRA on forget prompts", "clip_score": "CLIP score",
         "fid": "FID", "kid": "KID (+- std)", "fid_forget": "FID forget vs anchors", "pre_asr": "pre-ASR",
         "asr_prompt": "ASR prompt attack", "asr_inversion": "ASR inversion", "asr_paraphrase": "ASR paraphrase",
         "ua_paraphrase": "UA paraphrase"}
SPREADS = {"kid": "kid_std"}  # a metric shown with its spread, which then gets no row of its own


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _row(label: str, vals: list, shown: list) -> list[str]:
    """One table row: the label, each model's value as shown, and the change when there are two models."""
    row = [label] + shown
    if len(vals) == 2:
        a, b = vals
        row.append("-" if a is None or b is None else f"{b - a:+.3f}")
    return row


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per metric, one column per model (plus the change when there are two)."""
    models = report["models"]
    header = ["metric"] + [m["name"] for m in models]
    if len(models) == 2:
        header.append("change")
    rows = []
    spreads = set(SPREADS.values())
    for key in models[0]["metrics"]:
        if key in spreads:
            continue
        vals = [m["metrics"][key] for m in models]
        shown = [_fmt(v) for v in vals]
        if key in SPREADS:
            shown = [s if m["metrics"].get(SPREADS[key]) is None else f"{s} +- {_fmt(m['metrics'][SPREADS[key]])}"
                     for s, m in zip(shown, models)]
        rows.append(_row(NAMES.get(key, key), vals, shown))
        if key == "ua":  # concepts erased together: UA of each as well
            for name in models[0].get("ua_by_concept", {}):
                vals = [m.get("ua_by_concept", {}).get(name) for m in models]
                rows.append(_row(f"  UA {name}", vals, [_fmt(v) for v in vals]))
    return header, rows


def rich_table(report: dict):
    """The metrics table with a title line above and the protocol below, as one printable group."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    p = report["protocol"]
    title = Text(f"erase evaluate: {report['concept']!r} ({report['kind']}) on {report['base']['name']}",
                 style="bold")
    caption = Text(f"judge {report['judge']['name']} ({report['judge']['version']}); {p['samples_per_prompt']} "
                   f"samples x {sum(p['prompts'].values())} prompts per model, seeds from {p['seeds'][0]}; "
                   f"FID/KID on {report['judge']['features'] or 'n/a'}; {report['wall_seconds']} s", style="dim")
    t = Table()
    header, rows = table_rows(report)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return Group(title, t, caption)


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def group_grid(plan, spp, models, group: str, cols: int = 10, tile: int = 64):
    """One labelled block per model (the group's prompts, first seed each, `cols` to a row), stacked so the
    same prompt sits at the same place in every block: before and after at a glance."""
    from PIL import Image, ImageDraw

    from erasecli.sampling import image_grid

    idx = plan.group(group)
    if not idx:
        return None
    blocks = [(name, image_grid([imgs[i * spp] for i in idx], cols=min(cols, len(idx)), min_tile=tile))
              for name, imgs in models]
    label_h = 18
    width = max(b.width for _, b in blocks)
    out = Image.new("RGB", (width, sum(b.height + label_h for _, b in blocks)), "white")
    y = 0
    for name, b in blocks:
        ImageDraw.Draw(out).text((4, y + 3), name, fill="black")
        out.paste(b, (0, y + label_h))
        y += b.height + label_h
    return out


def write_report_dir(out: Path, report: dict, plan, spp, models, recipe, overwrite: bool,
                     robust: dict | None = None) -> None:
    from erasecli.outputs import replace_dir, staging_dir
    from erasecli.sampling import slug
    from erasecli.recipes import write_recipe

    tmp = staging_dir(out)
    try:
        for name, imgs in models:
            for i, p in enumerate(plan.prompts):
                folder = tmp / "images" / slug(name) / f"{i:03d}-{slug(p.prompt)}"
                folder.mkdir(parents=True, exist_ok=True)
                for s in range(spp):
                    imgs[i * spp + s].save(folder / f"{report['protocol']['seeds'][s]:06d}.png")
        grids = {}
        for group in ("forget", "retain", "cross"):
            g = group_grid(plan, spp, models, group)
            if g is not None:
                g.save(tmp / f"grid-{group}.png")
                grids[group] = g
        attack_grids = []
        if robust:  # each model's adversarial prompts, embeddings and attacked images, as `erase attack --out`
            seeds = report["robustness"]["protocol"]["seeds"]
            for name, res in robust.items():
                attack_grids += write_attack_files(tmp / "attacks" / slug(name), name, res, seeds)
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.html").write_text(render_html(report, grids, [n for n, _ in models], attack_grids))
        write_recipe(recipe, tmp / "recipe.yaml")
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render_html(report: dict, grids: dict, model_names, attack_grids=()) -> str:
    """A self-contained page (images inlined as data URIs) that opens in any browser."""
    e = html.escape
    header, rows = table_rows(report)
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    p = report["protocol"]
    sections = []
    for group, img in grids.items():
        n = p["prompts"][group]
        sections.append(
            f"<h2>{e(group)} prompts ({n})</h2><p>one block per model ({e(', '.join(model_names))}); each shows "
            f"the {e(group)} prompts in table order, first seed</p><img alt='{e(group)} grid' src='data:image/png;base64,{_png_b64(img)}'>")
    prompt_rows = "".join(
        f"<tr><td>{e(x['group'])}</td><td>{e(x['prompt'])}</td>"
        + "".join(f"<td>{e(_fmt(x['models'][m].get(report['kind'])))}</td>" for m in model_names) + "</tr>"
        for x in report["prompts"])
    model_heads = "".join(f"<th>{e(m)}</th>" for m in model_names)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>erase evaluate: {e(report['concept'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
img{{image-rendering:pixelated;max-width:100%}} .meta{{color:#555}}</style></head>
<body><h1>Erasing {e(repr(report['concept']))} ({e(report['kind'])}) on {e(report['base']['name'])}</h1>
<p class="meta">judge {e(report['judge']['name'])} {e(report['judge']['version'])}; FID/KID features:
{e(report['judge']['features'] or 'n/a')}; {p['samples_per_prompt']} samples per prompt, seeds {p['seeds'][0]}..
{p['seeds'][-1]}; {p['steps']} {e(p['scheduler'])} steps, guidance {p['guidance']}; erasecli
{e(report['erasecli_version'])}; {report['wall_seconds']} s</p>
<table><tr>{head}</tr>{body}</table>
{''.join(sections)}
{robustness_html(report['robustness']['models'], report['robustness']['protocol']) if report.get('robustness') else ''}
{_grids_html(attack_grids)}
<h2>Per prompt: share of images judged as the prompted {e(report['kind'])}</h2>
<table><tr><th>group</th><th>prompt</th>{model_heads}</tr>{prompt_rows}</table>
</body></html>
"""


# ---------------------------------------------------------------------------------------------------
# Robustness: `erase attack`'s folder, and the robustness section of both reports.


def robustness_rows(models: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per model, pre-ASR then ASR (N) per attack."""
    names = list(dict.fromkeys(n for m in models for n in m["attacks"]))
    header = ["model", "pre-ASR"] + [f"ASR {n}" for n in names] + (["UA paraphrase"] if "paraphrase" in names else [])
    rows = []
    for m in models:
        row = [m["name"], f"{_fmt(m['pre_asr'])} (N {m['n']})"]
        for n in names:
            s = m["attacks"].get(n)
            row.append("-" if s is None else f"{_fmt(s['asr'])} (N {s['n']})")
        if "paraphrase" in names:
            s = m["attacks"].get("paraphrase")
            row.append("-" if s is None else _fmt(s.get("ua_paraphrase")))
        rows.append(row)
    return header, rows


def rich_attack_table(report: dict):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    p = report["protocol"]
    title = Text(f"erase attack: {report['concept']!r} ({report['kind']}) on {report['base']['name']}", style="bold")
    caption = Text(f"judge {p['judge']} ({p['judge_version']}); a prompt succeeds when >= {p['threshold']} of its "
                   f"{p['samples']} images (seeds {p['seeds'][0]}..{p['seeds'][-1]}) show the concept; ASR counts "
                   f"pre-attack successes; budget {p['budget']}; {report['wall_seconds']} s", style="dim")
    t = Table()
    header, rows = robustness_rows(report["models"])
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return Group(title, t, caption)


def _attack_grid(plain: list, attacked: list, tile: int = 64):
    """Two rows: each prompt's first plain image above its first attacked image."""
    from erasecli.sampling import image_grid

    firsts = [imgs[0] for imgs in plain] + [imgs[0] for imgs in attacked]
    return image_grid(firsts, cols=max(1, len(plain)), min_tile=tile)


PROMPT_FILES = {"prompt": "adversarial_prompts.txt", "paraphrase": "paraphrase_prompts.txt",
                "inversion": "inversion_prompts.txt"}  # inversion's need its embedding loaded (see below)


def write_attack_dir(out: Path, report: dict, results: list, recipe, overwrite: bool) -> None:
    """`erase attack --out`: attack.json, report.html and, per model, the adversarial prompts (one a line, for
    `erase sample --prompts-file`), the inversion's embedding (`pipe.load_textual_inversion` loads it) and the
    images before and after each attack."""
    from erasecli.outputs import replace_dir, staging_dir
    from erasecli.recipes import write_recipe
    from erasecli.sampling import slug

    tmp = staging_dir(out)
    try:
        grids = []
        seeds = report["protocol"]["seeds"]
        for model, res in zip(report["models"], results):
            grids += write_attack_files(tmp / slug(model["name"]), model["name"], res, seeds)
        (tmp / "attack.json").write_text(json.dumps(report, indent=2))
        (tmp / "report.html").write_text(render_attack_html(report, grids))
        write_recipe(recipe, tmp / "recipe.yaml")
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_attack_files(folder: Path, model: str, res: dict, seeds) -> list:
    """One model's attack results into `folder`: `<attack>_prompts.txt` (PROMPT_FILES), the inversion's
    `inversion/learned_embeds.safetensors`, `images/<attack>/<i>-<prompt>/<seed>.png`. Returns (title, grid)
    pairs of plain against attacked images."""
    from safetensors.torch import save_file

    from erasecli.sampling import slug

    folder.mkdir(parents=True)
    grids = []
    for name, o in res["outcomes"].items():
        texts = [t for t in o.adversarial if t]
        (folder / PROMPT_FILES[name]).write_text("".join(t + "\n" for t in texts))
        if o.embedding:
            (folder / name).mkdir()
            save_file({k: v.contiguous() for k, v in o.embedding.items()}, str(folder / name / "learned_embeds.safetensors"))
        for i, (p, imgs) in enumerate(zip(o.prompts, o.images)):
            d = folder / "images" / name / f"{i:03d}-{slug(p)}"
            d.mkdir(parents=True, exist_ok=True)
            for s, im in zip(seeds, imgs or []):
                im.save(d / f"{s:06d}.png")
        if name != "paraphrase" and o.images and all(o.images):
            grids.append((f"{model}: {name} (top: plain forget prompts; bottom: attacked)",
                          _attack_grid(res["pre_images"], o.images)))
    return grids


def _grids_html(grids) -> str:
    e = html.escape
    return "".join(f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{_png_b64(g)}'>"
                   for title, g in grids)


def robustness_html(models: list[dict], protocol: dict) -> str:
    e = html.escape
    header, rows = robustness_rows(models)
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    adv = "".join(
        f"<tr><td>{e(m['name'])}</td><td>{e(n)}</td><td>{e(x['prompt'])}</td><td>{e(x['adversarial'])}</td>"
        f"<td>{'yes' if x['pre'] else 'no'}</td><td>{'yes' if x['success'] else 'no'}</td></tr>"
        for m in models for n, s in m["attacks"].items() for x in s["prompts"])
    return (f"<h2>Robustness</h2><p class='meta'>{e(protocol['counting'])}; judge {e(protocol['judge'])}, "
            f"threshold {protocol['threshold']} of {protocol['samples']} images, budget {protocol['budget']}</p>"
            f"<table><tr>{head}</tr>{body}</table>"
            "<h3>Prompts</h3><table><tr><th>model</th><th>attack</th><th>prompt</th><th>adversarial</th>"
            f"<th>pre</th><th>success</th></tr>{adv}</table>")


def render_attack_html(report: dict, grids: list) -> str:
    e = html.escape
    imgs = _grids_html(grids)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>erase attack: {e(report['concept'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
img{{image-rendering:pixelated;max-width:100%}} .meta{{color:#555}}</style></head>
<body><h1>Attacking the erasure of {e(repr(report['concept']))} on {e(report['base']['name'])}</h1>
{robustness_html(report['models'], report['protocol'])}
{imgs}
<p class="meta">erasecli {e(report['erasecli_version'])}; {report['wall_seconds']} s</p>
</body></html>
"""
