"""Bases: a registry of known names, plus any local diffusers folder or hub id, and `load_base()`.

`tiny` is the bundled Stable Diffusion pipeline trained on the tiny world (see tiny_world.py), `tiny-xl` its
SDXL counterpart, `tiny-flux` its FLUX.1 counterpart; the `sd-*`, `sdxl-*` and `flux-*` names are the hub
repositories users run on their GPUs. A base is loaded as the pipeline class its `model_index.json` names
(StableDiffusionPipeline, StableDiffusionXLPipeline or FluxPipeline). Hub bases are looked up in the local Hugging Face
cache first, and downloaded only when the hub can be reached; when it cannot, the error names the model
and how to get it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from erasecli.diffusion.kinds import KINDS, Kind, kind_for_pipeline, kind_of, pipeline_classes
from erasecli.errors import BaseNotFoundError, UsageError

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_DIR = ASSETS / "tiny"
TINY_XL_DIR = ASSETS / "tiny-xl"
TINY_FLUX_DIR = ASSETS / "tiny-flux"
ORACLE_DIR = ASSETS / "tiny-oracle-digit-3"  # the tiny base retrained without any image of a 3
CANVAS_DIR = ASSETS / "tiny-canvas"
CANVAS_ORACLE_DIR = ASSETS / "tiny-canvas-oracle-style-dotted"  # tiny-canvas's world without any dotted image
JUDGES_DIR = ASSETS / "judges"  # the digits world's judges; each other world's in a subfolder of its name


def judges_dir(world: str = "digits") -> Path:
    """Where a bundled world's judges (classifier/, clip/) are."""
    return JUDGES_DIR if world == "digits" else JUDGES_DIR / world


@dataclass(frozen=True)
class BaseSpec:
    name: str
    repo: str | None  # hub repository; None for a bundled base
    resolution: int  # image side in pixels
    description: str
    folder: Path | None = None  # a bundled base's folder
    reference: str | None = None  # a retrained base: the base it was retrained from (attack targets come from it)
    kind: str = "sd"  # erasecli.diffusion.kinds.KINDS: the family a hub base's pipeline is
    world: str = "digits"  # a bundled base: the world it was trained on (erasecli.models.worlds)


BASES: dict[str, BaseSpec] = {
    "tiny": BaseSpec("tiny", None, 32, "bundled: coloured handwritten digits, 32x32, runs on a CPU", TINY_DIR),
    "sd-1.4": BaseSpec("sd-1.4", "CompVis/stable-diffusion-v1-4", 512, "Stable Diffusion 1.4"),
    "sd-1.5": BaseSpec("sd-1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", 512, "Stable Diffusion 1.5"),
    "sd-2.1-base": BaseSpec("sd-2.1-base", "stabilityai/stable-diffusion-2-1-base", 512, "Stable Diffusion 2.1 base"),
    "tiny-xl": BaseSpec("tiny-xl", None, 32, "bundled: an SDXL pipeline (two text encoders, pooled and time-id "
                        "conditioning) trained on the tiny world, 32x32, runs on a CPU", TINY_XL_DIR),
    "sdxl-1.0": BaseSpec("sdxl-1.0", "stabilityai/stable-diffusion-xl-base-1.0", 1024, "Stable Diffusion XL 1.0 base",
                         kind="sdxl"),
    "tiny-flux": BaseSpec("tiny-flux", None, 32, "bundled: a FLUX.1 pipeline (Flux transformer, T5 and CLIP "
                          "text encoders, rectified flow) trained on the tiny world, 32x32, runs on a CPU",
                          TINY_FLUX_DIR),
    "flux-schnell": BaseSpec("flux-schnell", "black-forest-labs/FLUX.1-schnell", 1024,
                             "FLUX.1 [schnell] (timestep-distilled, no guidance)", kind="flux"),
    "flux-dev": BaseSpec("flux-dev", "black-forest-labs/FLUX.1-dev", 1024,
                         "FLUX.1 [dev] (guidance-distilled; gated on the hub: accept its licence first)", kind="flux"),
    "tiny-oracle-digit-3": BaseSpec("tiny-oracle-digit-3", None, 32, "bundled: the tiny base's text encoder and "
                                    "UNet retrained without any image of a 3 (exact unlearning, the reference "
                                    "an erasure of 'digit 3' is measured against)", ORACLE_DIR, "tiny"),
    "tiny-canvas": BaseSpec("tiny-canvas", None, 32, "bundled: the digits in five colours and eight drawing "
                            "styles (dotted, striped, ...), 32x32, runs on a CPU: style erasure as UnlearnCanvas "
                            "measures it", CANVAS_DIR, world="canvas"),
    "tiny-canvas-oracle-style-dotted": BaseSpec(
        "tiny-canvas-oracle-style-dotted", None, 32, "bundled: a text encoder and UNet trained on tiny-canvas's "
        "world without any dotted image (never taught the word 'dotted' or what it draws; exact unlearning, the "
        "reference an erasure of 'style dotted' is measured against)", CANVAS_ORACLE_DIR, "tiny-canvas",
        world="canvas"),
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class BaseRef:
    """Where a base lives: `kind` is bundled, local or hub; `location` a folder path or a hub repo id."""

    name: str  # canonical id, stored in deltas: registry name, hub id, or absolute folder path
    kind: str
    location: str
    reference: str | None = None  # the base a retrained base stands in for (its concept images come from there)
    world: str | None = None  # a bundled base's world ("digits", "canvas"); None for any other base

    @property
    def tiny_world(self) -> bool:
        """The base draws the tiny world (coloured digits): its concepts are derived, the shipped classifier
        judges it, the tiny CLIP scores it, and the shipped tiny presets are its defaults."""
        return self.kind == "bundled"


def resolve_base(name: str) -> BaseRef:
    """Map a --base value to where its weights are, without loading anything."""
    if name in BASES:
        spec = BASES[name]
        if spec.repo is None:
            return BaseRef(name, "bundled", str(spec.folder), spec.reference, spec.world)
        return BaseRef(name, "hub", spec.repo)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise BaseNotFoundError(
                f"base folder {path} has no model_index.json, so it is not a diffusers pipeline",
                hint="pass a folder written by StableDiffusionPipeline.save_pretrained, or a registry name",
            )
        return BaseRef(str(path.resolve()), "local", str(path.resolve()))
    if _HUB_ID.fullmatch(name) and not path.exists():
        return BaseRef(name, "hub", name)
    raise BaseNotFoundError(
        f"unknown base {name!r}",
        hint=f"use one of {', '.join(BASES)}, a local diffusers folder, or a hub id such as org/model",
    )


def pick_device(requested: str | None = None):
    """cuda > mps > cpu, unless one is requested."""
    import torch

    if requested in (None, "", "auto"):
        from erasecli.dist import launched, world

        if launched() and world().device is not None:  # under accelerate launch: this process's device
            return torch.device(world().device)
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {requested} asked for, but no CUDA device is visible", hint="use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {requested} asked for, but MPS is not available", hint="use --device cpu")
    return dev


DTYPES = ("auto", "fp32", "fp16", "bf16")


def pick_dtype(device, requested: str = "auto"):
    """fp16 on CUDA, fp32 elsewhere, unless one is requested."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested in table:
        return table[requested]
    raise UsageError(f"unknown dtype {requested!r}", hint=f"use one of {', '.join(DTYPES)}")


FLUX_ARCH_KEYS = ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                  "joint_attention_dim", "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")


def unet_arch(config: dict) -> str:
    """A short fingerprint of the denoiser's architecture (UNet or Flux transformer): deltas fit only a denoiser
    of the same shape."""
    if kind_of(config).flow:
        canon = json.dumps({k: config.get(k) for k in FLUX_ARCH_KEYS}, sort_keys=True, default=list)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]
    keys = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
            "down_block_types", "up_block_types", "attention_head_dim", "sample_size", "transformer_layers_per_block")
    arch = {k: config.get(k) for k in keys}
    if kind_of(config).added_conditioning:  # SDXL's (absent keys keep SD fingerprints as they were)
        arch |= {k: config.get(k) for k in ("addition_embed_type", "projection_class_embeddings_input_dim")}
    canon = json.dumps(arch, sort_keys=True, default=list)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


@dataclass
class Base:
    """A loaded base: the diffusers pipeline plus what deltas and reports need to know about it."""

    ref: BaseRef
    pipe: object  # diffusers.StableDiffusionPipeline, StableDiffusionXLPipeline or FluxPipeline
    device: object
    dtype: object

    @property
    def kind(self) -> Kind:
        """The model family (erasecli.diffusion.kinds): text encoders, conditioning, LoRA layout, schedule."""
        return kind_of(self.pipe)

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def denoiser(self):
        """The UNet, or the transformer of a Flux base."""
        return getattr(self.pipe, self.kind.denoiser)

    @property
    def arch(self) -> str:
        return unet_arch(dict(self.denoiser.config))

    @property
    def resolution(self) -> int:
        """The side the base draws at: the UNet's sample size in pixels; a Flux transformer has none, so its
        VAE's sample_size (1024 for FLUX.1, 32 for tiny-flux)."""
        if self.kind.flow:
            return int(self.pipe.vae.config.sample_size)
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor


def _missing(ref: BaseRef, why: str) -> BaseNotFoundError:
    return BaseNotFoundError(
        f"weights for base {ref.name!r} ({ref.location}) are not in the local Hugging Face cache and "
        f"could not be downloaded: {why}",
        hint=f"on a machine with internet run `hf download {ref.location}` (huggingface_hub >= 1.0; "
        f"older: `huggingface-cli download`), or pass --base /path/to/a/diffusers/folder",
    )


def quiet_loading() -> None:
    """No per-file loading bars from diffusers/transformers: our own progress bars are the ones users see."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def pipeline_class_name(ref: BaseRef) -> str:
    """The pipeline class a base's model_index.json names (registry hub bases: known; other hub ids: read from
    the local cache or the hub, StableDiffusionPipeline when neither answers, so loading reports what is missing)."""
    if ref.kind == "hub":
        spec = next((s for s in BASES.values() if s.repo == ref.location), None)
        if spec is not None:
            return KINDS[spec.kind].pipeline_class
        try:
            from diffusers import DiffusionPipeline

            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            index = DiffusionPipeline.load_config(ref.location, local_files_only=offline)
        except Exception:  # not resolvable: load as SD, whose error names the missing weights
            return KINDS["sd"].pipeline_class
    else:
        index = json.loads((Path(ref.location) / "model_index.json").read_text())
    name = index.get("_class_name", "")
    if name not in pipeline_classes():
        raise BaseNotFoundError(f"base {ref.name} is a {name or 'pipeline of no class'}, which erasecli does not "
                                "train or sample",
                                hint="use a Stable Diffusion 1.x/2.x, SDXL or FLUX.1 pipeline folder")
    return name


def load_base(name: str, device: str | None = None, dtype: str = "auto") -> Base:
    """Load a base as the pipeline its model_index.json names, on the chosen device and dtype."""
    import diffusers

    quiet_loading()
    ref = resolve_base(name)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    if ref.kind == "bundled" and not (Path(ref.location) / "model_index.json").exists():
        raise BaseNotFoundError(
            f"the bundled base {ref.name} is missing from {ref.location}",
            hint="reinstall erasecli, or rebuild it with `python -m erasecli.models.train_tiny`",
        )
    cls_name = pipeline_class_name(ref)
    cls = getattr(diffusers, cls_name)  # one of the kinds' pipeline classes, checked above
    kwargs = dict(dtype=dt, **kind_for_pipeline(cls_name).load_kwargs)
    if ref.kind in ("bundled", "local"):
        pipe = cls.from_pretrained(ref.location, **kwargs)
    else:
        try:  # local cache first: no network round trip when the weights are already here
            pipe = cls.from_pretrained(ref.location, local_files_only=True, **kwargs)
        except (OSError, ValueError) as cached_err:
            if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
                raise _missing(ref, "HF_HUB_OFFLINE is set") from cached_err
            try:
                pipe = cls.from_pretrained(ref.location, **kwargs)
            except (OSError, ValueError) as err:
                raise _missing(ref, type(err).__name__) from err
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    return Base(ref=ref, pipe=pipe, device=dev, dtype=dt)


def weights_fingerprint(base: Base) -> str:
    """A cheap fingerprint of a base's weight files (size plus first and last MiB of each), for caches."""
    folder: Path | None = None
    if base.ref.kind in ("bundled", "local"):
        folder = Path(base.ref.location)
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(base.ref.location, local_files_only=True))
        except Exception:  # not resolvable offline: fall back to the architecture alone
            folder = None
    h = hashlib.sha256(base.name.encode())
    if folder is not None:
        for f in sorted(folder.rglob("*")):
            if f.suffix in (".safetensors", ".bin") and f.is_file():
                size = f.stat().st_size
                h.update(f"{f.relative_to(folder)}:{size}".encode())
                with open(f, "rb") as fh:
                    h.update(fh.read(2**20))
                    fh.seek(max(0, size - 2**20))
                    h.update(fh.read(2**20))
    return h.hexdigest()[:16]
