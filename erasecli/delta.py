"""Deltas: what an unlearning run changes, saved so that a plain diffusers pipeline can load it.

A delta is a folder holding `pytorch_lora_weights.safetensors` in diffusers' LoRA format (peft keys
converted with diffusers' own helpers, prefixed `unet.`; a Flux base's: peft keys prefixed `transformer.`),
so `pipe.load_lora_weights(folder)` works with no erasecli code. The safetensors header carries diffusers'
`lora_adapter_metadata` (rank, alpha, targets, so the LoRA scale is restored exactly) and erasecli's own keys:
base, base denoiser architecture, method, concept, resolved recipe, version, creation time, metrics.
`recipe.yaml` and `delta.json` beside it say the same for people.

A guard (`erase unlearn --method sld`) is the other kind of folder: a sampling-time erasure that changes no
weight. It holds `guard.safetensors` (the safety concept's and the empty prompt's condition tensors, the same
header keys plus `erasecli.guard`, its settings), `guard.json` and `recipe.yaml`. `apply_deltas` puts it on
the UNet (erasecli.diffusion.guard) and `remove_deltas` takes LoRA and guard off again; a plain diffusers
pipeline cannot load it (README, "Guards").
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from erasecli import __version__
from erasecli.errors import DeltaError
from erasecli.outputs import check_out, replace_dir, staging_dir

LORA_FILE = "pytorch_lora_weights.safetensors"
GUARD_FILE = "guard.safetensors"
META_PREFIX = "erasecli."


@dataclass(frozen=True)
class DeltaInfo:
    """What a delta's header says about it."""

    path: Path
    base: str
    base_arch: str
    method: str
    concept: str
    version: str
    created: str
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    concepts: tuple = ()  # every concept erased into this delta (`concept` joins them with " + ")
    kind: str = "lora"  # "lora" (weights) or "guard" (sampling time)
    guard: dict = field(default_factory=dict)  # a guard's settings

    @property
    def file(self) -> Path:
        return self.path / (GUARD_FILE if self.kind == "guard" else LORA_FILE)

    def to_dict(self) -> dict:
        d = {"path": str(self.path), "base": self.base, "base_arch": self.base_arch, "method": self.method,
             "concept": self.concept, "concepts": list(self.concepts or (self.concept,)),
             "version": self.version, "created": self.created, "recipe": self.recipe, "metrics": self.metrics}
        if self.kind == "guard":
            d |= {"kind": "guard", "guard": self.guard}
        return d


def add_lora(unet, rank: int, alpha: float, target_modules) -> None:
    """Attach a fresh, trainable peft LoRA adapter to the UNet (lora_B starts at zero: a no-op until trained)."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                                init_lora_weights=True))


def one_key_style(layers: dict) -> dict:
    """diffusers' converter renames the peft keys of attention projections only (`to_k.lora_A` -> `to_k.lora.down`),
    and its loader converts a UNet state dict whole or not at all, by its first key: a delta whose first module is
    another layer (SDXL's `add_embedding.linear_1`, a resnet conv) would load without its attention projections.
    So every module's keys get the one style (`.lora.down` / `.lora.up`)."""
    return {k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v for k, v in layers.items()}


def save_lora_delta(unet, out: Path, *, base, method: str, concept: str, recipe: dict,
                    metrics: dict | None = None, overwrite: bool = False, extra=None, concepts=(),
                    text_encoders: dict | None = None) -> DeltaInfo:
    """Write the UNet's peft adapter (and the text encoders', `{pipeline attribute: model}`, when given) as a
    diffusers LoRA delta folder, atomically; `extra(folder)` may add files (logs, plots) to the folder before it
    is moved into place. The base kind's own pipeline class writes it (SDXL: `text_encoder_2.` keys too)."""
    import diffusers
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out)
    check_out(out, overwrite)
    kind = base.kind
    layers = get_peft_model_state_dict(unet)
    if not kind.flow:  # a Flux transformer's loader reads peft's own keys (transformer.<module>.lora_A.weight)
        layers = one_key_style(convert_state_dict_to_diffusers(layers))
    layers = {k: v.detach().to("cpu").contiguous() for k, v in layers.items()}

    def config(model) -> dict:
        cfg = model.peft_config["default"].to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}

    packed = {f"{kind.denoiser}.{k}": v for k, v in config(unet).items()}
    te_layers = {}
    for name, model in (text_encoders or {}).items():
        if name not in kind.lora_text_encoders:
            raise DeltaError(f"a {kind.name} base's LoRA loader reads no text encoder {name!r}")
        sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        te_layers[name] = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
        packed |= {f"{name}.{k}": v for k, v in config(model).items()}
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    info = DeltaInfo(path=out, base=base.name, base_arch=base.arch, method=method, concept=concept,
                     version=__version__, created=created, recipe=recipe, metrics=metrics or {},
                     concepts=tuple(concepts) or (concept,))
    header = {
        "format": "pt",
        # The same packing diffusers' save_lora_weights uses ("unet." + peft field), so alpha/rank reload.
        LORA_ADAPTER_METADATA_KEY: json.dumps(packed, sort_keys=True, default=str),
        **{META_PREFIX + k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True))
           for k, v in info.to_dict().items() if k != "path"},
    }

    def save_with_header(weights, filename):
        save_file(weights, filename, metadata=header)

    def write(tmp):
        names = kind.lora_layers_kwargs  # {"unet": "unet_lora_layers", "text_encoder": ..., ...}
        getattr(diffusers, kind.pipeline_class).save_lora_weights(
            str(tmp), **{names[kind.denoiser]: layers},
            **{names[a]: te_layers.get(a) for a in kind.lora_text_encoders},
            save_function=save_with_header)

    _write_folder(out, overwrite, write, info, "delta.json", recipe, extra)
    return info


def _write_folder(out: Path, overwrite: bool, write, info: DeltaInfo, info_name: str, recipe: dict, extra) -> None:
    """Stage a delta or guard folder (what `write(tmp)` writes, the info JSON, recipe.yaml, what `extra(tmp)` adds)
    and swap it in whole, so an existing folder is never half-overwritten."""
    tmp = staging_dir(out)
    try:
        write(tmp)
        (tmp / info_name).write_text(json.dumps(info.to_dict() | {"path": None}, indent=2))
        from erasecli.recipes import recipe_from_dict, write_recipe

        if recipe:
            write_recipe(recipe_from_dict(recipe), tmp / "recipe.yaml")
        if extra is not None:
            extra(tmp)
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_delta_info(path: str | Path) -> DeltaInfo:
    """Read a delta's (or a guard's) header metadata without loading its tensors."""
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise DeltaError(f"delta {p} does not exist", hint="pass the folder written by `erase unlearn`")
    file = p
    if p.is_dir():
        file = p / LORA_FILE if (p / LORA_FILE).exists() or not (p / GUARD_FILE).exists() else p / GUARD_FILE
    if not file.exists():
        raise DeltaError(f"delta folder {p} has no {LORA_FILE}", hint="pass the folder written by `erase unlearn`")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise DeltaError(f"delta file {file} is not a readable safetensors file: {err}") from err

    def get(key, default=""):
        return meta.get(META_PREFIX + key, default)

    def get_json(key):
        raw = get(key, "{}")
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return {}

    concepts = get_json("concepts")
    is_guard = file.name == GUARD_FILE
    return DeltaInfo(path=file.parent, base=get("base"), base_arch=get("base_arch"), method=get("method"),
                     concept=get("concept"), version=get("version"), created=get("created"),
                     recipe=get_json("recipe"), metrics=get_json("metrics"),
                     concepts=tuple(concepts) if isinstance(concepts, list) else (get("concept"),),
                     kind="guard" if is_guard else "lora", guard=get_json("guard") if is_guard else {})


def check_kind(path, want: str) -> DeltaInfo:
    """A folder given as --delta must be a LoRA delta, one given as --guard a guard: say which flag fits."""
    info = read_delta_info(path)
    if info.kind != want:
        flag = "--guard" if info.kind == "guard" else "--delta"
        what = "a guard (a sampling-time erasure)" if info.kind == "guard" else "a LoRA delta"
        raise DeltaError(f"{path} is {what}", hint=f"pass it with {flag} {path}")
    return info


def save_guard(out: Path, tensors: dict, *, base, method: str, concept: str, concepts, recipe: dict,
               settings: dict, metrics: dict | None = None, overwrite: bool = False, extra=None) -> DeltaInfo:
    """Write a guard folder atomically: guard.safetensors (tensors + header), guard.json, recipe.yaml, and what
    `extra(folder)` adds."""
    from safetensors.torch import save_file

    out = Path(out)
    check_out(out, overwrite)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    info = DeltaInfo(path=out, base=base.name, base_arch=base.arch, method=method, concept=concept,
                     version=__version__, created=created, recipe=recipe, metrics=metrics or {},
                     concepts=tuple(concepts) or (concept,), kind="guard", guard=settings)
    header = {META_PREFIX + k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True))
              for k, v in info.to_dict().items() if k not in ("path", "kind")}
    def write(tmp):
        save_file({k: v.detach().to("cpu").float().contiguous() for k, v in tensors.items()}, str(tmp / GUARD_FILE),
                  metadata=header)

    _write_folder(out, overwrite, write, info, "guard.json", recipe, extra)
    return info


def check_fits(info: DeltaInfo, base, force: bool = False) -> None:
    """Refuse a delta made for another base (name or UNet architecture), unless forced."""
    if force:
        return
    if info.base_arch and info.base_arch != base.arch:
        raise DeltaError(
            f"delta {info.path} was made for base {info.base!r} with another UNet architecture than "
            f"base {base.name!r}", hint="pass the --base it was made for (--force cannot fix a shape mismatch)")
    if not info.base:
        raise DeltaError(f"delta {info.path} does not say which base it was made for",
                         hint="pass --force to load it anyway")
    if info.base != base.name:
        raise DeltaError(f"delta {info.path} was made for base {info.base!r}, not {base.name!r}",
                         hint=f"use --base {info.base}, or --force to load it anyway")


def apply_deltas(base, paths, force: bool = False) -> list[DeltaInfo]:
    """Load delta folders into the base pipeline with diffusers' own LoRA loader, all at weight 1; a guard
    folder goes on the UNet (at most one). `remove_deltas` undoes both."""
    infos = [read_delta_info(p) for p in paths]
    for info in infos:
        check_fits(info, base, force)
    guards = [i for i in infos if i.kind == "guard"]
    if len(guards) > 1:
        raise DeltaError(f"{len(guards)} guards given; one applies at a time",
                         hint="evaluate or attack each guard in its own column (repeat --guard there)")
    from diffusers.utils import logging as diffusers_logging

    names = []
    level = diffusers_logging.get_verbosity()
    # diffusers notes that our deltas hold no text-encoder keys, on every load: true and expected.
    diffusers_logging.set_verbosity_error()
    try:
        for i, info in enumerate(i for i in infos if i.kind == "lora"):
            name = f"delta{i}"
            try:
                base.pipe.load_lora_weights(str(info.path), adapter_name=name)
            except (ValueError, RuntimeError, KeyError) as err:
                raise DeltaError(f"delta {info.path} does not fit base {base.name!r}: {err}".splitlines()[0]) from err
            names.append(name)
    finally:
        diffusers_logging.set_verbosity(level)
    if names:
        base.pipe.set_adapters(names, adapter_weights=[1.0] * len(names))
    for info in guards:
        _install_guard(base, info)
    return infos


def _install_guard(base, info: DeltaInfo) -> None:
    from safetensors.torch import load_file

    from erasecli.diffusion import guard as G

    t = load_file(str(info.file))
    s = info.guard
    unet = base.denoiser
    if info.method == "safree":
        from erasecli.diffusion import safree as F

        try:
            settings = F.SafreeSettings(alpha=float(s["alpha"]), svf=bool(s["svf"]), svf_steps=int(s["svf_steps"]),
                                        svf_midpoint=float(s["svf_midpoint"]), svf_sharpness=float(s["svf_sharpness"]),
                                        positions=str(s.get("positions", "triggers")))
            keywords = t["keywords"]
        except (KeyError, TypeError, ValueError) as err:
            raise DeltaError(f"guard {info.path} is incomplete ({err})", hint="write it again with erase unlearn") from err
        G.remove(unet)
        guard = F.SafreeGuard(keywords.to(base.device), settings, int(base.pipe.scheduler.config.num_train_timesteps))
        G.install(unet, guard)
        guard.attach(base.pipe.text_encoder)
        return
    try:
        settings = G.SldSettings(**{k: float(s[k]) for k in ("guidance_scale", "warmup", "threshold",
                                                              "momentum_scale", "mom_beta")})
        concept_c, uncond_c = t["concept"], t["uncond"]
    except (KeyError, TypeError, ValueError) as err:
        raise DeltaError(f"guard {info.path} is incomplete ({err})", hint="write it again with erase unlearn") from err
    G.remove(unet)
    G.install(unet, G.SafetyGuard(concept_c.to(base.device), uncond_c.to(base.device), settings,
                                  int(base.pipe.scheduler.config.num_train_timesteps)))


@contextmanager
def merged(model):
    """The model's LoRA folded into its base weights while inside, for passes without gradient to the adapter
    (critic-rl's rollouts, sampling with deltas): one matrix product per adapted layer instead of three, the same
    function up to float rounding. Leaving restores the base weights bit for bit (a saved copy: peft's unmerge
    subtracts, which leaves rounding behind). Layers whose adapters are off (`base_only`) or already merged are left
    as they are; nothing inside may switch adapters on or off."""
    import torch
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.disable_adapters and not m.merged]
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.merge()
        yield
    finally:
        with torch.no_grad():
            for m, w in zip(layers, saved):
                if m.merged:
                    m.unmerge()
                m.get_base_layer().weight.copy_(w)


def remove_deltas(base) -> None:
    """Take every LoRA delta and the guard (if any) off the base again."""
    from erasecli.diffusion import guard as G

    base.pipe.unload_lora_weights()
    G.remove(base.denoiser)
