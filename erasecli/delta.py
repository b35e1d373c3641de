"""Deltas: what an unlearning run changes, saved so that a plain diffusers pipeline can load it.

A delta is a folder holding `pytorch_lora_weights.safetensors` in diffusers' LoRA format (peft keys
converted with diffusers' own helpers, prefixed `unet.`), so `pipe.load_lora_weights(folder)` works with no
erasecli code. The safetensors header carries diffusers' `lora_adapter_metadata` (rank, alpha, targets, so
the LoRA scale is restored exactly) and erasecli's own keys: base, base UNet architecture, method, concept,
resolved recipe, version, creation time, metrics. `recipe.yaml` and `delta.json` beside it say the same for
people.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from erasecli import __version__
from erasecli.errors import DeltaError
from erasecli.outputs import check_out, replace_dir, staging_dir

LORA_FILE = "pytorch_lora_weights.safetensors"
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

    def to_dict(self) -> dict:
        return {"path": str(self.path), "base": self.base, "base_arch": self.base_arch, "method": self.method,
                "concept": self.concept, "concepts": list(self.concepts or (self.concept,)),
                "version": self.version, "created": self.created, "recipe": self.recipe, "metrics": self.metrics}


def add_lora(unet, rank: int, alpha: float, target_modules) -> None:
    """Attach a fresh, trainable peft LoRA adapter to the UNet (lora_B starts at zero: a no-op until trained)."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                                init_lora_weights=True))


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
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {k: v.detach().to("cpu").contiguous() for k, v in layers.items()}

    def config(model) -> dict:
        cfg = model.peft_config["default"].to_dict()
        return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}

    packed = {f"unet.{k}": v for k, v in config(unet).items()}
    kind = base.kind
    te_layers = {}
    for name, model in (text_encoders or {}).items():
        if name not in kind.text_encoders:
            raise DeltaError(f"a {kind.name} base has no text encoder {name!r}")
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

    tmp = staging_dir(out)
    try:
        names = kind.lora_layers_kwargs  # {"unet": "unet_lora_layers", "text_encoder": ..., ...}
        getattr(diffusers, kind.pipeline_class).save_lora_weights(
            str(tmp), **{names[kind.denoiser]: layers}, **{names[a]: te_layers.get(a) for a in kind.text_encoders},
            save_function=save_with_header)
        (tmp / "delta.json").write_text(json.dumps(info.to_dict() | {"path": None}, indent=2))
        from erasecli.recipes import recipe_from_dict, write_recipe

        if recipe:
            write_recipe(recipe_from_dict(recipe), tmp / "recipe.yaml")
        if extra is not None:
            extra(tmp)
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def read_delta_info(path: str | Path) -> DeltaInfo:
    """Read a delta's header metadata without loading its tensors."""
    from safetensors import safe_open

    p = Path(path)
    file = p / LORA_FILE if p.is_dir() else p
    if not p.exists():
        raise DeltaError(f"delta {p} does not exist", hint="pass the folder written by `erase unlearn`")
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
    return DeltaInfo(path=file.parent, base=get("base"), base_arch=get("base_arch"), method=get("method"),
                     concept=get("concept"), version=get("version"), created=get("created"),
                     recipe=get_json("recipe"), metrics=get_json("metrics"),
                     concepts=tuple(concepts) if isinstance(concepts, list) else (get("concept"),))


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
    """Load delta folders into the base pipeline with diffusers' own LoRA loader; all at weight 1."""
    infos = [read_delta_info(p) for p in paths]
    for info in infos:
        check_fits(info, base, force)
    from diffusers.utils import logging as diffusers_logging

    names = []
    level = diffusers_logging.get_verbosity()
    # diffusers notes that our deltas hold no text-encoder keys, on every load: true and expected.
    diffusers_logging.set_verbosity_error()
    try:
        for i, info in enumerate(infos):
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
    return infos
