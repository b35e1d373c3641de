"""`erase export`: a delta in the layouts other tools load.

- `kohya`: one safetensors file in the kohya / webui key layout (`lora_unet_<module>.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; `lora_te_text_model_<module>...` for a trained text encoder), made with
  diffusers' own `convert_state_dict_to_kohya`; ComfyUI, AUTOMATIC1111 and diffusers' `load_lora_weights` read
  it. The alpha of every module is the delta's LoRA alpha, so the scale alpha / rank is kept. An SDXL delta
  is written as kohya's sd-scripts write SDXL LoRAs: UNet modules under their original (SGM) names
  (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k`), the encoders as `lora_te1_` / `lora_te2_`.
  A Flux delta is written in the layout of Black Forest Labs' checkpoints that kohya's sd-scripts and ComfyUI
  use (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_linear1`): the separate q / k / v
  (and the single blocks' MLP input) of diffusers' transformer are one fused projection there, so their LoRAs
  are stacked into one of the summed rank, exactly (`flux_kohya`).
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
    if read_delta_info(delta).kind == "guard":
        raise UsageError(f"{delta} is a guard: it changes no weights, so there is nothing to export",
                         hint="a guard runs inside erasecli's sampler: erase sample --guard DIR (README, Guards)")


def sgm_name(module: str, layers_per_block: int) -> str:
    """A diffusers UNet module name in the original SDXL (SGM) layout kohya's SDXL LoRAs use:
    'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> 'input_blocks.4.1.transformer_blocks.0.attn2.to_k'
    (layers_per_block 2). diffusers' kohya loader maps these back with the same arithmetic."""
    import re

    n = layers_per_block
    resnet = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection"}

    def inner(kind: str, rest: str) -> str:
        if kind == "resnets":
            head, _, tail = rest.partition(".")
            return ".".join(filter(None, [resnet.get(head, head), tail]))
        return rest

    fixed = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0"}
    if module in fixed:
        return fixed[module]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)", module)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + b * (n + 1) + j}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op"
    m = re.fullmatch(r"mid_block\.(attentions|resnets)\.(\d+)\.(.+)", module)
    if m:
        at = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block.{at}.{inner(m[1], m[3])}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)", module)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{b * (n + 1) + j}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"
    raise UsageError(f"UNet module {module} has no SDXL (SGM) name erasecli knows for a kohya export",
                     hint="train the LoRA on attention, feed-forward or resnet modules, or use --format merged")


def _peft_state(delta_file: Path):
    """The delta's diffusers keys ('unet.<module>.lora.down.weight', and 'text_encoder.<module>.lora_linear_layer.
    down.weight' when the text encoder was trained) as peft keys ('...lora_A.weight'), which is what diffusers'
    kohya converter takes. Text-encoder keys get the 'text_model.' level that CLIP checkpoints (and so webui and
    ComfyUI) name, whether or not the installed transformers' CLIPTextModel has one."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    sd = load_file(str(delta_file))
    out = convert_unet_state_dict_to_peft({k: v for k, v in sd.items() if k.startswith("unet.")})
    for part in ("text_encoder", "text_encoder_2"):
        te = {k.removeprefix(part + "."): v for k, v in sd.items() if k.startswith(part + ".")}
        if te:
            te = convert_state_dict_to_peft(te)
            out |= {f"{part}." + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in te.items()}
    return out


def _sgm_keys(state: dict, layers_per_block: int) -> dict:
    """Peft keys 'unet.<diffusers module>.lora_A.weight' renamed to 'unet.<SGM module>.lora_A.weight'."""
    out = {}
    for k, v in state.items():
        if k.startswith("unet."):
            module, _, leaf = k.removeprefix("unet.").rpartition(".lora_")
            k = f"unet.{sgm_name(module, layers_per_block)}.lora_{leaf}"
        out[k] = v
    return out


def _flux_names(cfg: dict) -> dict:
    """{BFL module: [(diffusers transformer module, output width), ...]} for a Flux transformer config: a list of
    several parts is one fused projection in BFL checkpoints (their outputs stacked in this order)."""
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    names = {"img_in": [("x_embedder", inner)], "txt_in": [("context_embedder", inner)]}
    for short, long in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                        ("guidance_in", "guidance_embedder")):
        names[f"{short}_in_layer"] = [(f"time_text_embed.{long}.linear_1", inner)]
        names[f"{short}_out_layer"] = [(f"time_text_embed.{long}.linear_2", inner)]
    for i in range(cfg["num_layers"]):
        d = f"transformer_blocks.{i}"
        names |= {
            f"double_blocks_{i}_img_attn_qkv": [(f"{d}.attn.to_{x}", inner) for x in "qkv"],
            f"double_blocks_{i}_img_attn_proj": [(f"{d}.attn.to_out.0", inner)],
            f"double_blocks_{i}_txt_attn_qkv": [(f"{d}.attn.add_{x}_proj", inner) for x in "qkv"],
            f"double_blocks_{i}_txt_attn_proj": [(f"{d}.attn.to_add_out", inner)],
            f"double_blocks_{i}_img_mlp_0": [(f"{d}.ff.net.0.proj", 4 * inner)],
            f"double_blocks_{i}_img_mlp_2": [(f"{d}.ff.net.2", inner)],
            f"double_blocks_{i}_txt_mlp_0": [(f"{d}.ff_context.net.0.proj", 4 * inner)],
            f"double_blocks_{i}_txt_mlp_2": [(f"{d}.ff_context.net.2", inner)],
            f"double_blocks_{i}_img_mod_lin": [(f"{d}.norm1.linear", 6 * inner)],
            f"double_blocks_{i}_txt_mod_lin": [(f"{d}.norm1_context.linear", 6 * inner)],
        }
    for i in range(cfg["num_single_layers"]):
        s = f"single_transformer_blocks.{i}"
        names |= {
            f"single_blocks_{i}_linear1": [(f"{s}.attn.to_{x}", inner) for x in "qkv"] + [(f"{s}.proj_mlp", 4 * inner)],
            f"single_blocks_{i}_linear2": [(f"{s}.proj_out", inner)],
            f"single_blocks_{i}_modulation_lin": [(f"{s}.norm.linear", 3 * inner)],
        }
    return names


def flux_kohya(state: dict, alpha: float, cfg: dict) -> dict:
    """A Flux delta's peft keys ('transformer.<module>.lora_A.weight') as a kohya / ComfyUI Flux LoRA. A fused BFL
    projection whose diffusers parts carry LoRAs (A_j: r x in, B_j: out_j x r, scale alpha / r) gets
    down = [A_1; ...; A_n] (n r x in), up = the B_j placed block-diagonally over the parts' output rows (zero rows
    for a part without a LoRA) and alpha n * alpha: (n alpha) / (n r) * up @ down = alpha / r * B_j A_j on every
    part's rows, the same weight change."""
    import torch

    mods = {k.removeprefix("transformer.").rpartition(".lora_")[0] for k in state if k.startswith("transformer.")}
    out, used = {}, set()
    for bfl, parts in _flux_names(cfg).items():
        have = [(m, w) for m, w in parts if m in mods]
        if not have:
            continue
        downs = [state[f"transformer.{m}.lora_A.weight"] for m, _ in have]
        ups = {m: state[f"transformer.{m}.lora_B.weight"] for m, _ in have}
        r = downs[0].shape[0]
        up = torch.zeros(sum(w for _, w in parts), r * len(have), dtype=downs[0].dtype)
        row = col = 0
        for m, w in parts:
            if m in ups:
                up[row : row + w, col : col + r] = ups[m]
                col += r
            row += w
        key = f"lora_unet_{bfl}"
        out |= {f"{key}.lora_down.weight": torch.cat(downs), f"{key}.lora_up.weight": up,
                f"{key}.alpha": torch.tensor(alpha * len(have))}
        used |= {m for m, _ in have}
    left = sorted(mods - used)
    if left:
        raise UsageError(f"transformer module {left[0]} has no name in the Flux kohya layout erasecli knows",
                         hint="train the LoRA on attention, feed-forward or modulation layers, or use --format merged")
    return out


def _layout_config(info) -> tuple:
    """(kohya layout, denoiser config) of the delta's base, read from its folder or the hub cache (no weights):
    the config only where the layout's module names need it (SDXL's SGM names, Flux's BFL names), else None; a
    base this machine does not know is named as SD 1.x (the layout kohya gives it)."""
    from erasecli.diffusion.kinds import kind_for_pipeline
    from erasecli.errors import BaseNotFoundError
    from erasecli.models.registry import pipeline_class_name, resolve_base

    try:
        ref = resolve_base(info.base)
    except BaseNotFoundError:
        return "sd", None
    kind = kind_for_pipeline(pipeline_class_name(ref))
    if kind.kohya_layout == "sd":
        return "sd", None
    if ref.kind != "hub":
        return kind.kohya_layout, json.loads((Path(ref.location) / kind.denoiser / "config.json").read_text())
    try:
        from diffusers import FluxTransformer2DModel, UNet2DConditionModel

        cls = FluxTransformer2DModel if kind.flow else UNet2DConditionModel
        return kind.kohya_layout, dict(cls.load_config(ref.location, subfolder=kind.denoiser))
    except OSError as err:
        raise BaseNotFoundError(f"the {kind.denoiser} config of base {ref.location} (for the kohya module names) "
                                "is not in the local Hugging Face cache", hint=f"run `hf download {ref.location} "
                                f"{kind.denoiser}/config.json` on a machine with internet") from err


def export_kohya(delta: str, out: Path, overwrite: bool = False) -> dict:
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from safetensors import safe_open

    from erasecli.delta import LORA_FILE, read_delta_info

    info = read_delta_info(delta)
    file = Path(info.path) / LORA_FILE
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata() or {}
    peft_cfg = json.loads(header.get("lora_adapter_metadata", "{}"))
    alphas = {part: float(peft_cfg.get(f"{part}.lora_alpha", 0) or 0)
              for part in ("unet", "transformer", "text_encoder", "text_encoder_2")}
    layout, cfg = _layout_config(info)
    if layout == "flux":
        from safetensors.torch import load_file

        sd = load_file(str(file))
        if any(not k.startswith("transformer.") for k in sd):
            raise UsageError("the Flux kohya export writes transformer LoRAs only", hint="use --format merged")
        return _write_kohya(flux_kohya(sd, alphas["transformer"], cfg), header, out, overwrite)
    state = _peft_state(file)
    sgm_cfg = cfg if layout == "sgm" else None
    if sgm_cfg is not None:
        state = _sgm_keys(state, int(sgm_cfg["layers_per_block"]))
    kohya = convert_state_dict_to_kohya(state)  # text_encoder -> lora_te1_, text_encoder_2 -> lora_te2_
    if sgm_cfg is None:  # SD 1.x kohya files name the text encoder lora_te_ (lora_te1_ / lora_te2_ are SDXL's two)
        kohya = {("lora_te_" + k.removeprefix("lora_te1_")) if k.startswith("lora_te1_") else k: v
                 for k, v in kohya.items()}

    def alpha_of(key: str) -> float:
        if key.startswith("lora_te2_"):
            return alphas["text_encoder_2"]
        return alphas["text_encoder" if key.startswith(("lora_te_", "lora_te1_")) else "unet"]

    # the converter sets alpha = rank; the delta's own alpha keeps its scale
    kohya = {k: (torch.tensor(alpha_of(k)) if k.endswith(".alpha") and alpha_of(k) else v) for k, v in kohya.items()}
    return _write_kohya(kohya, header, out, overwrite)


def _write_kohya(kohya: dict, header: dict, out: Path, overwrite: bool) -> dict:
    from safetensors.torch import save_file

    from erasecli.outputs import replace_dir, staging_dir

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
