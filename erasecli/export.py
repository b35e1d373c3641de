"""`erase export`: a delta in the layouts other tools load.

- `kohya`: one safetensors file in the kohya / webui key layout (`lora_unet_<module>.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; `lora_te_text_model_<module>...` for a trained text encoder), made with
  diffusers' own `convert_state_dict_to_kohya`; ComfyUI, AUTOMATIC1111 and diffusers' `load_lora_weights` read
  it. The alpha of every module is the delta's LoRA alpha, so the scale alpha / rank is kept.
- `merged`: a full diffusers pipeline folder whose UNet has the delta fused into its weights
  (`fuse_lora`), for tools that take a model and no LoRA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from erasecli.errors import UsageError

FORMATS = ("kohya", "merged")
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"


def check_export(delta: str, fmt: str, out: Path | None, overwrite: bool) -> None:
    from erasecli.delta import read_delta_info
    from erasecli.outputs import check_out

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", hint="valid formats: " + ", ".join(FORMATS))
    if out is None:
        raise UsageError("nowhere to put the export", hint="pass --out DIR")
    check_out(out, overwrite)
    read_delta_info(delta)


def _peft_state(delta_file: Path):
    """The delta's diffusers keys ('unet.<module>.lora.down.weight', and 'text_encoder.<module>.lora_linear_layer.
    down.weight' when the text encoder was trained) as peft keys ('...lora_A.weight'), which is what diffusers'
    kohya converter takes. Text-encoder keys get the 'text_model.' level that CLIP checkpoints (and so webui and
    ComfyUI) name, whether or not the installed transformers' CLIPTextModel has one."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    sd = load_file(str(delta_file))
    out = convert_unet_state_dict_to_peft({k: v for k, v in sd.items() if k.startswith("unet.")})
    te = {k.removeprefix("text_encoder."): v for k, v in sd.items() if k.startswith("text_encoder.")}
    if te:
        te = convert_state_dict_to_peft(te)
        out |= {"text_encoder." + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in te.items()}
    return out


def export_kohya(delta: str, out: Path, overwrite: bool = False) -> dict:
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors import safe_open
    from safetensors.torch import save_file

    from erasecli.delta import LORA_FILE, read_delta_info
    from erasecli.outputs import replace_dir, staging_dir

    info = read_delta_info(delta)
    file = Path(info.path) / LORA_FILE
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata() or {}
    peft_cfg = json.loads(header.get("lora_adapter_metadata", "{}"))
    alphas = {part: float(peft_cfg.get(f"{part}.lora_alpha", 0) or 0) for part in ("unet", "text_encoder")}
    kohya = convert_state_dict_to_kohya(_peft_state(file))
    # SD 1.x kohya files name the text encoder lora_te_ (lora_te1_ / lora_te2_ are SDXL's two encoders)
    kohya = {("lora_te_" + k.removeprefix("lora_te1_")) if k.startswith("lora_te1_") else k: v for k, v in kohya.items()}

    def alpha_of(key: str) -> float:
        return alphas["text_encoder" if key.startswith("lora_te_") else "unet"]

    # the converter sets alpha = rank; the delta's own alpha keeps its scale
    kohya = {k: (torch.tensor(alpha_of(k)) if k.endswith(".alpha") and alpha_of(k) else v) for k, v in kohya.items()}
    meta = {k: v for k, v in header.items() if k.startswith("erasecli.")}
    meta["erasecli.export"] = "kohya"
    out = Path(out)
    tmp = staging_dir(out)
    try:
        save_file({k: v.contiguous() for k, v in kohya.items()}, str(tmp / KOHYA_FILE), metadata=meta)
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"format": "kohya", "out": str(out), "file": str(out / KOHYA_FILE), "keys": len(kohya)}


def export_merged(delta: str, out: Path, *, base_name: str | None = None, dtype: str = "fp32", force: bool = False,
                  overwrite: bool = False) -> dict:
    """Fuse the delta into a freshly loaded base (its own copy: fusing changes weights in place) and save it."""
    from erasecli.delta import apply_deltas, read_delta_info
    from erasecli.models.registry import load_base
    from erasecli.outputs import replace_dir, staging_dir

    info = read_delta_info(delta)
    base = load_base(base_name or info.base or "tiny", device="cpu", dtype=dtype)
    apply_deltas(base, [delta], force=force)
    pipe = base.pipe
    out = Path(out)
    tmp = staging_dir(out)
    try:
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "erasecli_export.json").write_text(json.dumps({"format": "merged", "delta": info.to_dict()}, indent=2))
        replace_dir(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"format": "merged", "out": str(out), "base": base.name}
