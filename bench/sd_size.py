"""Training cost of every method at Stable Diffusion 1.4 size, from the configs, with random weights.

No weights are downloaded: the UNet (`diffusers.UNet2DConditionModel`, SD-1.4 config, 859.5M parameters), the
VAE (`AutoencoderKL`, 83.7M) and the text encoder (`transformers.CLIPTextModel`, ViT-L/14's text tower, 123.1M)
are built from their configs with random weights (`torch.manual_seed(0)`), put in a real
`StableDiffusionPipeline` with SD-1.4's DDIM noise schedule and the CLIP tokenizer, and wrapped as an
`erasecli.models.registry.Base`. Each method then runs its real code, `erasecli.methods.loop.run`, with its
`recipes/sd14-vangogh-<method>.yaml` recipe (LoRA rank and targets, batch size, method settings):

- siss, adaptive-siss, ppo-alpha, esd train on an `erasecli.data.TrainData` built directly from random latents
  (N, 4, h, w) and random text embeddings (P, 77, 768) for the recipe's prompts, so nothing is sampled;
- critic-rl rolls out from the random UNet, decodes with the VAE and scores with a CLIP reward; its critic is
  a random one saved to a folder and passed as `critic.path` (the `train-critic` phase is estimated from a
  timed rollout, not run), its reward CLIP is a random ViT-L/14 on CUDA and the shipped tiny CLIP on a CPU.

Per method: step 1 is a warm-up whose FLOPs are counted (`torch.utils.flop_counter.FlopCounterMode`, from the
step's first UNet call to its end); the next `--steps` steps are timed (the loop's own per-step timer). Peak
memory is `torch.cuda.max_memory_allocated` on CUDA, the peak RSS (`resource`, high-water mark reset before
the run through /proc/self/clear_refs) on a CPU. Reported: seconds/step, peak memory, FLOPs per step,
achieved FLOP/s, MFU (CUDA with a known peak only), and the full-run estimate (seconds/step x the recipe's
train.steps) against the targets (siss family: <= 300 s and <= 12 GB on one H100; critic-rl: <= 900 s).
Then the cost knobs, one at a time, against siss as shipped (run before and after the knobs, averaged):
train.mixed_precision, train.gradient_checkpointing, train.cache_text_embeds, lora.rank, train.compile
(`knob_effect` lines).

On CUDA: 512 x 512 (latent 64), bf16 weights (autocast bf16: the loop needs autocast around half weights),
batch per recipe, 3 timed steps, knobs and compile on. On a CPU the same code runs at a reduced resolution
(latent 8 = 64 px), batch 1, one timed step, smaller critic-rl rollouts (extrapolated to the recipe's), fewer
prompts, and no knobs unless `--knobs`; every line says `reduced_resolution: true`: such figures show that each
method runs at SD size and how the methods compare, not what a GPU run costs. A `--budget-s` stops starting
new measurements once spent (a skipped line says so).

`--arch flux` does the same at FLUX.1 [dev] size: a `FluxTransformer2DModel` of 19 double- and 38 single-stream
blocks (about 12B parameters), its 16-channel VAE, CLIP-L's text tower and T5 v1.1 XXL's encoder (about 4.7B),
built directly in the run's dtype, in a real `FluxPipeline` with FLUX.1 [dev]'s flow-matching scheduler and a
T5 length of 512. Each method runs its `recipes/flux-dev-vangogh-<method>.yaml` where one is shipped, else its
sd14 recipe with FLUX.1 [dev]'s sampling (28 steps, embedded guidance 3.5); every line names which. The SD
targets are reported for reference and not judged. bf16 weights need about 34 GB before activations.

    python -m bench.sd_size [--methods siss,esd] [--steps N] [--latent 16] [--batch B] [--knobs] [--compile]
                            [--budget-s S] [--cpu] [--threads T] [--quick] [--arch sd|flux]
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import emit

BENCH = "sd_size"
ROOT = Path(__file__).resolve().parent.parent
# In run order: once --budget-s is spent the rest are skipped, and the siss variants tell least beyond siss.
METHODS = ("siss", "esd", "critic-rl", "adaptive-siss", "ppo-alpha", "ac")
SISS_FAMILY = ("siss", "adaptive-siss", "ppo-alpha")
TARGET_SECONDS = {"siss": 300.0, "adaptive-siss": 300.0, "ppo-alpha": 300.0, "critic-rl": 900.0}
TARGET_PEAK_GB = {"siss": 12.0, "adaptive-siss": 12.0, "ppo-alpha": 12.0}

# SD-1.4 (CompVis/stable-diffusion-v1-4) component configs; with these the parameter counts are SD_PARAMS.
SD14_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD14_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
SD14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_L14_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       patch_size=14, image_size=224, hidden_act="quick_gelu", projection_dim=768)
# The published sizes of SD-1.4's components, to check the configs above against.
SD_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}

# --quick: the same architecture families, a few thousand times smaller, so tests run the same code in seconds.
QUICK_UNET = dict(SD14_UNET, layers_per_block=1, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32)
QUICK_VAE = dict(SD14_VAE, layers_per_block=1, block_out_channels=(32, 32, 32, 32))
QUICK_TEXT = dict(SD14_TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  projection_dim=32)
QUICK_VISION = dict(CLIP_L14_VISION, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, projection_dim=32, image_size=32, patch_size=16)
SCALES = {"sd14": (SD14_UNET, SD14_VAE, SD14_TEXT, CLIP_L14_VISION),
          "quick": (QUICK_UNET, QUICK_VAE, QUICK_TEXT, QUICK_VISION)}

# FLUX.1 [dev] (black-forest-labs/FLUX.1-dev) component configs, as its model folder's config files give them: a
# transformer of 19 double- and 38 single-stream blocks (published as 12B parameters), a 16-channel VAE, CLIP
# ViT-L/14's text tower for the pooled embedding and T5 v1.1 XXL's encoder (4.7B) for the token states.
FLUX1_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX1_VAE = dict(SD14_VAE, latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
                 scaling_factor=0.3611, shift_factor=0.1159)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              dense_act_fn="gelu_new", is_gated_act=True, layer_norm_epsilon=1e-6, is_encoder_decoder=False,
              use_cache=False)
FLUX1_SCHEDULE = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)
FLUX1_T5_LENGTH = 512  # FluxPipeline's max_sequence_length for FLUX.1 [dev]
# The published sizes, to check the configs against (the exact counts are not published: a tolerance of 1 %).
FLUX_PARAMS_ABOUT = {"transformer": 12.0e9, "text_encoder_2": 4.76e9}
QUICK_FLUX_TRANSFORMER = dict(FLUX1_TRANSFORMER, in_channels=64, num_layers=1, num_single_layers=1,
                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                              pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
QUICK_T5 = dict(T5_XXL, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
FLUX_SCALES = {"flux1": (FLUX1_TRANSFORMER, FLUX1_VAE, SD14_TEXT, CLIP_L14_VISION, T5_XXL, FLUX1_T5_LENGTH),
               "quick-flux": (QUICK_FLUX_TRANSFORMER, dict(FLUX1_VAE, layers_per_block=1, block_out_channels=(32,) * 4),
                              QUICK_TEXT, QUICK_VISION, QUICK_T5, 32)}
# SD-1.4's noise schedule (its scheduler_config.json), as the DDIM scheduler the methods build from it.
SD14_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     clip_sample=False, set_alpha_to_one=False, steps_offset=1)
# Dense bf16/fp16 tensor-core peaks (vendor data sheets), for MFU. Unknown devices get no MFU.
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12))
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# -- memory -------------------------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS high-water mark (Linux: /proc/self/clear_refs "5"); False if unsupported,
    in which case peak_rss_mb() is the peak of the whole process so far. Freed heap is first handed back to
    the system (glibc malloc_trim), so the new mark starts from what is live, not from what an earlier run
    left cached."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the mark starts from the cached heap too
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def free_memory_gib() -> float:
    """The machine's free physical memory, GiB."""
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_mb() -> float:
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(r / (2**20 if sys.platform == "darwin" else 2**10), 1)


class PeakMemory:
    """Peak memory over a block: CUDA max_memory_allocated on CUDA, peak RSS on a CPU."""

    def __init__(self, device):
        self.device = device
        self.kind = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                     else "peak RSS of the process (high-water mark reset before the run)")

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif not reset_peak_rss():
            self.kind = "peak RSS of the process so far (the high-water mark could not be reset)"

    def read_mb(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return peak_rss_mb()


# -- the random SD-1.4-sized base ---------------------------------------------------------------------------
def component_configs(scale: str, latent: int) -> tuple[dict, dict, dict, dict]:
    """(unet, vae, text, vision) configs; the UNet's sample_size is the latent side trained at (rollouts and
    `Base.resolution` read it; it does not change the parameter count). A Flux scale gives (transformer, vae,
    CLIP text, vision): the VAE's sample_size is then the pixel side, which a Flux base draws at."""
    if scale in FLUX_SCALES:
        tr, vae, text, vision = FLUX_SCALES[scale][:4]
        return dict(tr), dict(vae, sample_size=latent * 8), dict(text), dict(vision)
    unet, vae, text, vision = SCALES[scale]
    return dict(unet, sample_size=latent), dict(vae, sample_size=latent * 8), dict(text), dict(vision)


def build_components(scale: str = "sd14", latent: int = 64, device: str = "cpu", seed: int = 0,
                     dtype=None) -> dict:
    """The UNet (or Flux transformer and T5 encoder), VAE and text encoder from their configs, random weights, on
    `device` ("meta": shapes only, instant, for counting parameters), in `dtype` (default fp32; built in it, so a
    12B transformer never exists in fp32)."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    u, v, t, _ = component_configs(scale, latent)
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        with torch.device(device):
            if scale in FLUX_SCALES:
                return {"transformer": FluxTransformer2DModel(**u), "vae": AutoencoderKL(**v),
                        "text_encoder": CLIPTextModel(CLIPTextConfig(**t)),
                        "text_encoder_2": T5EncoderModel(T5Config(**FLUX_SCALES[scale][4]))}
            return {"unet": UNet2DConditionModel(**u), "vae": AutoencoderKL(**v),
                    "text_encoder": CLIPTextModel(CLIPTextConfig(**t))}
    finally:
        torch.set_default_dtype(before)


def param_counts(components: dict) -> dict:
    return {name: sum(p.numel() for p in m.parameters()) for name, m in components.items()}


@functools.cache
def sd14_tokenizer():
    """SD's CLIP tokenizer: the tiny base ships the real 49,408-token vocabulary; SD's context is 77 tokens."""
    from transformers import CLIPTokenizer

    from erasecli.models.registry import TINY_DIR

    return CLIPTokenizer.from_pretrained(str(TINY_DIR / "tokenizer"), model_max_length=77)


def t5_tokenizer(length: int):
    """A T5 tokenizer padding to `length` (FLUX.1 [dev]: 512): tiny-flux's, built from the tiny world's captions
    (its ids are a subset of any T5 vocabulary's range; what the ids mean does not matter to random weights)."""
    from transformers import T5TokenizerFast

    from erasecli.models.registry import TINY_FLUX_DIR

    return T5TokenizerFast.from_pretrained(str(TINY_FLUX_DIR / "tokenizer_2"), model_max_length=length)


def make_base(components: dict, device, dtype, name: str, scale: str = "sd14"):
    """A `Base` around a real StableDiffusionPipeline (no safety checker, as load_base) or, for a Flux scale, a
    real FluxPipeline of the given components."""
    import torch
    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusionPipeline,
    )

    from erasecli.models.registry import Base, BaseRef

    if "transformer" in components:
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULE), vae=components["vae"],
                            text_encoder=components["text_encoder"], tokenizer=sd14_tokenizer(),
                            text_encoder_2=components["text_encoder_2"],
                            tokenizer_2=t5_tokenizer(FLUX_SCALES[scale][5]), transformer=components["transformer"])
    else:
        pipe = StableDiffusionPipeline(vae=components["vae"], text_encoder=components["text_encoder"],
                                       tokenizer=sd14_tokenizer(), unet=components["unet"],
                                       scheduler=DDIMScheduler(**SD14_SCHEDULE), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if dtype != torch.float32:
        pipe.to(dtype)
    return Base(ref=BaseRef(name, "local", name), pipe=pipe, device=device, dtype=dtype)


def attention_processors(unet) -> list[str]:
    return sorted({type(p).__name__ for p in unet.attn_processors.values()})


def random_train_data(recipe, base, latent: int, gen_seed: int = 0):
    """TrainData for the recipe's prompts with random latents and random condition tensors: nothing sampled.
    Sizes follow the recipe (data.images_per_prompt per forget prompt, data.retain_images_per_prompt per
    retain prompt); prompt index 0 is the empty prompt, as build_train_data makes it."""
    import torch

    from erasecli.concepts import concept_for
    from erasecli.data import TrainData

    sets = concept_for(recipe, world=None)
    n, nr = recipe.data.images_per_prompt, recipe.data.retain_images_per_prompt
    prompts = list(dict.fromkeys(["", *sets.forget, *sets.anchor, *sets.retain]))
    index = {p: i for i, p in enumerate(prompts)}
    g = torch.Generator("cpu").manual_seed(gen_seed)
    if base.kind.flow:  # 16-channel latents (read as 2 x 2 patches); a condition: T5's states and a pooled row
        from erasecli.diffusion.cond import max_sequence_length

        C = base.denoiser.config.in_channels // 4
        L, D = max_sequence_length(base.pipe) + 1, base.denoiser.config.joint_attention_dim
    else:
        C = base.denoiser.config.in_channels
        L, D = base.pipe.tokenizer.model_max_length, base.pipe.text_encoder.config.hidden_size
    dev = base.device

    def lat(k):
        return torch.randn((k, C, latent, latent), generator=g).to(dev)  # (k, C, h, w)

    f_c = [index[p] for p in sets.forget for _ in range(n)]
    a_c = [index[p] for p in sets.anchor for _ in range(n)]
    r_c = [index[p] for p in sets.retain for _ in range(nr)]
    return TrainData(
        prompts=prompts, embeds=torch.randn((len(prompts), L, D), generator=g).to(dev),  # (P, L, D)
        forget=lat(len(f_c)), forget_c=torch.tensor(f_c, device=dev),
        anchor=lat(len(a_c)), anchor_c=torch.tensor(a_c, device=dev),
        retain=lat(len(r_c)), retain_c=torch.tensor(r_c, device=dev, dtype=torch.long), sets=sets,
        info={"random": True, "forget_images": len(f_c), "retain_images": len(r_c), "sampling_seconds": 0.0})


def random_clip_folder(scale: str, folder: Path) -> Path:
    """A CLIP (ViT-L/14 at sd14 scale) with random weights and the CLIP tokenizer and image processor, saved as
    a folder `erasecli.judges.Clip.load` reads: the critic-rl reward model without a download."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    _, _, text, vision = component_configs(scale, 8)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=text["projection_dim"])
    torch.manual_seed(1)
    CLIPModel(cfg).save_pretrained(str(folder))
    side = vision["image_size"]
    ip = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                            image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    CLIPProcessor(image_processor=ip, tokenizer=sd14_tokenizer()).save_pretrained(str(folder))
    return folder


def random_critic_folder(recipe, base, folder: Path) -> Path:
    """A critic with random weights saved as `erase train-critic` would, so critic-rl loads it (critic.path)."""
    from erasecli.critic.model import save_critic
    from erasecli.critic.train import critic_metadata, new_critic

    save_critic(new_critic(recipe, base), folder, critic_metadata(recipe, base, {"random": True}))
    return folder


def peak_flops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS:
        if key in name:
            return value
    return None


# -- one measured run ---------------------------------------------------------------------------------------
@dataclass
class Plan:
    scale: str
    arch: str  # "sd" (SD-1.4's components) or "flux" (FLUX.1 [dev]'s)
    device: object
    dtype: object
    latent: int
    batch: int | None  # None: the recipe's train.batch_size
    timed_steps: int
    methods: tuple
    knobs: bool
    compile: bool
    budget_s: float
    reward_clip: str  # "tiny" (the shipped tiny CLIP) or "random" (a random CLIP of this scale)
    reduced: bool  # CPU-sized run: fewer prompts, smaller critic-rl rollouts, fewer esd sampling steps
    sampling_estimate: bool
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="erasecli-sdsize-")))
    started: float = field(default_factory=time.perf_counter)

    def over_budget(self) -> bool:
        return time.perf_counter() - self.started > self.budget_s


def recipe_path(method: str, plan: Plan) -> tuple[Path, list]:
    """(the recipe a method's figures come from, the overrides that adapt it to the arch). Flux: the method's
    flux-dev recipe where one is shipped, else its sd14 recipe with FLUX.1 [dev]'s sampling (28 steps, embedded
    guidance 3.5, as recipes/flux-dev-vangogh-esd.yaml)."""
    if plan.arch == "flux":
        own = ROOT / "recipes" / f"flux-dev-vangogh-{method}.yaml"
        if own.exists():
            return own, []
        return ROOT / "recipes" / f"sd14-vangogh-{method}.yaml", ["base=flux-dev", "sample.steps=28",
                                                                  "sample.guidance=3.5"]
    return ROOT / "recipes" / f"sd14-vangogh-{method}.yaml", []


def recipe_for(method: str, plan: Plan, extra=()):
    """The method's recipe (recipe_path) with the run's overrides: step count, batch, autocast for half weights,
    and on a reduced run fewer prompts (one forget template, one retain prompt), small critic-rl rollouts, fewer
    esd sampling steps. Returns (recipe, the shipped recipe with the arch's overrides only, overrides)."""
    import torch

    from erasecli.recipes import load_recipe

    path, arch_o = recipe_path(method, plan)
    shipped = load_recipe(path, arch_o)
    total = 1 + plan.timed_steps
    o = [*arch_o, f"train.steps={total}", f"train.checkpoint_every={total}"]
    if plan.batch is not None:
        o.append(f"train.batch_size={plan.batch}")
    if plan.dtype in (torch.bfloat16, torch.float16) and shipped.train.mixed_precision == "no":
        # half weights with fp32 latents and adapter fail without autocast (dtype mismatch in the first matmul)
        o.append("train.mixed_precision=" + ("bf16" if plan.dtype == torch.bfloat16 else "fp16"))
    if plan.reduced:
        o += [f"concept.forget_templates={shipped.concept.forget_templates[0]}",
              f"concept.retain_prompts={shipped.concept.retain_prompts[0]}", "eval.in_domain=",
              "data.images_per_prompt=2", "data.retain_images_per_prompt=2"]
        if method == "critic-rl":
            o += ["critic.prompts_per_step=1", "critic.samples_per_prompt=2", "critic.steps=2"]
        if method == "esd":
            o.append("sample.steps=2")
    o += list(extra)
    return load_recipe(path, o), shipped, o


_ATTACHED: list = []  # the adapter contexts run_method entered: they stay on for the follow-up measurements


def remove_adapter(unet) -> None:
    while _ATTACHED:
        _ATTACHED.pop().__exit__(None, None, None)
    cfg = getattr(unet, "peft_config", None)
    if cfg:
        unet.delete_adapters(list(cfg))


def run_method(recipe, base, data, plan: Plan, count_flops: bool) -> dict:
    """loop.run with step 1 as warm-up (FLOPs counted from its first UNet call) and the rest timed."""
    from torch.utils.flop_counter import FlopCounterMode

    from erasecli.methods import get_method
    from erasecli.methods.adapter import attached_for
    from erasecli.methods.loop import run

    counter = FlopCounterMode(display=False) if count_flops else None
    state = {"on": False, "done": not count_flops}

    def start_counting(module, args):
        if not state["done"] and not state["on"]:
            counter.__enter__()
            state["on"] = True

    def progress(k, total, row):
        if k == 1 and state["on"]:
            counter.__exit__(None, None, None)
            state.update(on=False, done=True)

    mem = PeakMemory(base.device)
    handle = base.denoiser.register_forward_pre_hook(start_counting) if count_flops else None
    mem.start()
    try:
        # entered here, left by remove_adapter: the follow-up measurements run with the adapter on
        _ATTACHED.append(attached_for(recipe.lora, base, recipe.train.seed))
        adapter = _ATTACHED[-1].__enter__()
        result = run(recipe, base, data, get_method(recipe.method), adapter, out=plan.work / "out", progress=progress)
        peak = mem.read_mb()
    finally:
        if handle is not None:
            handle.remove()
        if state["on"]:
            counter.__exit__(None, None, None)
    rows = result["rows"]
    timed = [r["seconds"] for r in rows[1:]]
    return {"result": result, "rows": rows, "warmup_seconds": rows[0]["seconds"], "step_seconds": timed,
            "seconds_per_step": sum(timed) / len(timed), "peak_mb": peak, "peak_kind": mem.kind,
            "flops": counter.get_total_flops() if count_flops else None, "params": result["params"]}


def guided_pass_cost(base, recipe, data, batch: int) -> tuple[float, int]:
    """Seconds and FLOPs of one no-grad denoiser pass over 2 x batch inputs (a guided sampling step), under the
    recipe's autocast, with the adapter on: what each extra partial-sampling step of esd costs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from erasecli.diffusion.cond import unet_eps

    x = data.forget[:1].expand(2 * batch, -1, -1, -1).contiguous()  # (2B, C, h, w)
    t = torch.full((2 * batch,), 500, device=base.device)
    emb = data.embeds[:1].expand(2 * batch, -1, -1).contiguous()  # (2B, L, D)

    def once():
        with torch.no_grad(), _autocast(recipe, base):  # half weights come with autocast (recipe_for)
            unet_eps(base.denoiser, x, t, emb)
        if base.device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()  # no warm-up call: esd's step ran this batch shape with no grad just before
    once()
    secs = time.perf_counter() - t0
    fc = FlopCounterMode(display=False)
    with fc:
        once()
    return secs, fc.get_total_flops()


def esd_n_stops(method, rows) -> list[int]:
    """The partial-sampling depth n_stop of each logged esd step, read back from its timestep t on the method's
    own sampling schedule (DDIM's, or the flow ODE's Euler steps on Flux)."""
    ts = [float(t) for t in method.sched.timesteps]
    return [min(range(len(ts)), key=lambda i: abs(ts[i] - r["t"])) for r in rows]


# -- the bench ----------------------------------------------------------------------------------------------
def common_fields(plan: Plan, base) -> dict:
    res = plan.latent * base.pipe.vae_scale_factor
    d = dict(device=plan.device.type, weights_dtype=str(plan.dtype).replace("torch.", ""), resolution=res,
             latent=plan.latent, reduced_resolution=res < 512, arch=plan.arch, scale=plan.scale,
             attention=attention_processors(base.denoiser), weights="random (built from the configs, seed 0)")
    if res < 512:
        d["note"] = (f"{res} px, not 512 px: a {plan.device.type.upper()} run sized to finish in minutes; "
                     "seconds and memory here are not comparable with the 512 px GPU targets")
    if plan.arch == "flux":
        d["flux_note"] = ("FLUX.1 draws at 1024 px (--latent 128, 4,096 image tokens); 512 px is 1,024 tokens. "
                          "The siss-family and critic-rl targets were set for SD-1.4 and are reported, not judged")
    return d


def measure_method(method: str, base, plan: Plan, common: dict) -> dict | None:
    import torch

    from erasecli.data import build_train_data
    from erasecli.models.registry import JUDGES_DIR

    recipe, shipped, overrides = recipe_for(method, plan)
    extra_notes = []
    if method == "critic-rl":
        clip_dir = (JUDGES_DIR / "clip" if plan.reward_clip == "tiny"
                    else random_clip_folder(plan.scale, plan.work / "reward-clip"))
        recipe, shipped, overrides = recipe_for(method, plan, [f"critic.clip_model={clip_dir}"])
        critic_dir = random_critic_folder(recipe, base, plan.work / "critic")
        recipe, shipped, overrides = recipe_for(method, plan, [f"critic.clip_model={clip_dir}",
                                                               f"critic.path={critic_dir}"])
        data = build_train_data(recipe, base, images=False)  # prompt sets only: critic-rl samples its own
        extra_notes.append("critic: random weights loaded from critic.path (train-critic not run; see "
                           "critic_pretrain_estimate_seconds)")
        extra_notes.append(("reward CLIP: the shipped tiny CLIP" if plan.reward_clip == "tiny" else
                            f"reward CLIP: random {'small' if 'quick' in plan.scale else 'ViT-L/14'} CLIP")
                           + "; erasecli.rewards runs it on the base's device")
    else:
        data = random_train_data(recipe, base, plan.latent)
        extra_notes.append("TrainData from random latents and random text embeddings (no sampling)")
    B = recipe.train.batch_size
    lines = dict(method=method, recipe=f"recipes/{recipe_path(method, plan)[0].name}", overrides=overrides,
                 batch_size=B, lora_rank=recipe.lora.rank, mixed_precision=recipe.train.mixed_precision, **common)
    try:
        m = run_method(recipe, base, data, plan, count_flops=True)
    except Exception as err:  # OOM on a GPU, or a method the random base cannot run: say so, go on
        remove_adapter(base.denoiser)
        if base.device.type == "cuda":
            torch.cuda.empty_cache()
        emit(BENCH, "seconds_per_step", None, "s/step", error=f"{type(err).__name__}: {err}"[:500], **lines)
        return None
    sps, flops = m["seconds_per_step"], float(m["flops"])
    what = "one optimiser step of loop.run (the method's real step)"
    try:
        if method == "esd":
            # a step's cost grows with its partial-sampling depth n_stop ~ U{0..sample.steps-1}: put the
            # measured steps at the shipped recipe's expected depth with the measured cost of one guided pass
            b_s, b_f = guided_pass_cost(base, recipe, data, B)
            n = esd_n_stops(m["result"]["method"], m["rows"])
            want = (shipped.sample.steps - 1) / 2
            sps = max(sps + b_s * (want - sum(n[1:]) / len(n[1:])), 0.0)
            flops = flops + b_f * (want - n[0])
            what += (f"; measured n_stop {n[1:]} (warm-up {n[0]}), corrected to the expected n_stop {want} of "
                     f"sample.steps={shipped.sample.steps} with one guided pass = {b_s:.3f} s, {b_f:.3g} FLOP")
        if method == "critic-rl":
            c, s = recipe.critic, shipped.critic
            measured, wanted = c.prompts_per_step * c.samples_per_prompt * c.steps, \
                s.prompts_per_step * s.samples_per_prompt * s.steps
            if measured != wanted:
                sps, flops = sps * wanted / measured, flops * wanted / measured
                what += (f"; measured with {c.prompts_per_step * c.samples_per_prompt} rollouts x {c.steps} steps, "
                         f"extrapolated linearly in rollouts x steps to the recipe's "
                         f"{s.prompts_per_step * s.samples_per_prompt} x {s.steps}")
            env = m["result"]["method"].env
            prompts = [data.sets.forget[0]] * (c.prompts_per_step * c.samples_per_prompt)
            if base.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad(), _autocast(recipe, base):
                env.rollout(base.denoiser, prompts, torch.Generator("cpu").manual_seed(0))
            if base.device.type == "cuda":
                torch.cuda.synchronize()
            per_traj_step = (time.perf_counter() - t0) / (len(prompts) * c.steps)
            pre = per_traj_step * s.train_trajectories * s.steps
            emit(BENCH, "critic_pretrain_estimate_seconds", round(pre, 2), "s",
                 what=f"train-critic's rollouts: {s.train_trajectories} trajectories x {s.steps} steps at the "
                 f"measured {per_traj_step:.4f} s per trajectory-step (with decode and reward); the critic's "
                 f"{s.train_epochs} fitting epochs are not included", **lines)
    finally:
        remove_adapter(base.denoiser)
    notes = "; ".join([what, *extra_notes] + (["ppo-alpha's PPO update (tiny MLPs, every ppo.update_every="
                                               f"{recipe.ppo.update_every} steps) falls outside the timed steps"]
                                              if method == "ppo-alpha" else []))
    emit(BENCH, "seconds_per_step", round(sps, 4), "s/step", measured=notes, warmup_seconds=round(
        m["warmup_seconds"], 3), step_seconds=[round(s, 4) for s in m["step_seconds"]],
        trainable_params=m["params"], **lines)
    peak_gb = m["peak_mb"] / 1024
    on_target_hw = (base.device.type == "cuda" and not common["reduced_resolution"] and peak_flops(base.device)
                    and plan.arch == "sd")  # the targets are SD-1.4's
    tgt_mem = TARGET_PEAK_GB.get(method)
    emit(BENCH, "peak_memory_mb", m["peak_mb"], "MiB", kind=m["peak_kind"],
         **({"target_gb": tgt_mem, "meets_target": (peak_gb <= tgt_mem) if on_target_hw else None} if tgt_mem else {}),
         **lines)
    counted = ("FlopCounterMode over the warm-up step, from its first UNet call (the few policy-MLP FLOPs before "
               "it are left out)" + ("; corrected as seconds_per_step says" if method in ("esd", "critic-rl") else ""))
    emit(BENCH, "step_flops", round(flops), "FLOP", counted=counted, **lines)
    achieved = flops / sps if sps > 0 else None
    emit(BENCH, "achieved_flops_per_second", achieved, "FLOP/s", **lines)
    peak = peak_flops(base.device)
    emit(BENCH, "mfu", None if peak is None or achieved is None else round(achieved / peak, 4), "fraction",
         peak_flops=peak, why=None if peak else ("the CPU's peak FLOP/s is unknown" if base.device.type == "cpu"
                                                else "no peak known for this GPU"), **lines)
    steps = shipped.train.steps
    full = sps * steps
    extra = {}
    if plan.sampling_estimate and method != "critic-rl":
        extra["data_sampling_estimate_seconds"] = round(
            sampling_estimate(base, shipped, 1 if "quick" in plan.scale else None), 2)
    tgt = TARGET_SECONDS.get(method)
    emit(BENCH, "full_run_estimate_seconds", round(full, 1), "s", train_steps=steps,
         model="seconds_per_step x the shipped recipe's train.steps (training only"
         + (", data sampling apart" if extra else "") + ")",
         **({"target": tgt, "meets_target": (full <= tgt) if on_target_hw else None} if tgt else {}),
         **extra, **lines)
    return {"seconds_per_step": sps, "peak_mb": m["peak_mb"], "flops": flops}


def _autocast(recipe, base):
    import contextlib

    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.train.mixed_precision)
    return torch.autocast(base.device.type, dtype=dtype) if dtype else contextlib.nullcontext()


_SAMPLING_RATE: dict = {}


def sampling_estimate(base, shipped, batch: int | None = None) -> float:
    """Seconds to sample the shipped recipe's training images (forget, anchor, retain) with `sampling.generate` at its
    sample settings, from one timed batch of `batch` (default sample.batch_size) images after a 2-step warm-up."""
    from erasecli import sampling
    from erasecli.concepts import concept_for

    cfg, d = shipped.sample, shipped.data
    sets = concept_for(shipped, world=None)
    n_images = 2 * d.images_per_prompt * len(sets.forget) + d.retain_images_per_prompt * len(sets.retain)
    batch = batch or cfg.batch_size
    key = (cfg.steps, cfg.guidance, cfg.eta, batch)
    if key not in _SAMPLING_RATE:
        prompts = [sets.forget[0]] * batch
        sampling.generate(base, prompts, list(range(batch)), steps=2, guidance=cfg.guidance, batch_size=batch)
        t0 = time.perf_counter()
        sampling.generate(base, prompts, list(range(batch)), steps=cfg.steps, guidance=cfg.guidance, eta=cfg.eta,
                     batch_size=batch)
        _SAMPLING_RATE[key] = len(prompts) / (time.perf_counter() - t0)
    return n_images / _SAMPLING_RATE[key]


def knob_effects(base, plan: Plan, common: dict) -> None:
    """siss with one cost knob changed at a time. The baseline (siss as shipped) is run right before the knobs
    and again after them, and the two averaged: in one process later runs find warm caches and a grown heap,
    so a baseline taken only before would flatter every knob."""
    import torch

    from erasecli.recipes import recipe_keys

    keys = set(recipe_keys())
    half = plan.dtype in (torch.bfloat16, torch.float16)
    knobs = [("train.mixed_precision", "bf16"), ("train.gradient_checkpointing", "true"),
             ("train.cache_text_embeds", "false"), ("lora.rank", "16"), ("train.compile", "true")]

    def siss_run(extra=()):
        recipe, _, overrides = recipe_for("siss", plan, extra)
        try:
            return run_method(recipe, base, random_train_data(recipe, base, plan.latent), plan,
                              count_flops=False), overrides
        finally:
            remove_adapter(base.denoiser)

    skipped, measured = [], []
    first, _ = siss_run()
    for key, value in knobs:
        why = None
        if key not in keys:
            why = f"this erasecli's recipes have no field {key}"
        elif key == "train.mixed_precision" and half:
            why = ("the weights are half precision, which the loop runs only under autocast, so the baseline "
                   "already autocasts; run with --dtype fp32 to compare autocast with fp32")
        elif key == "train.compile" and not plan.compile:
            why = ("torch.compile of the SD UNet is off unless --compile (on a CPU its first step compiles for "
                   "minutes)")
        elif plan.over_budget():
            why = f"the --budget-s {plan.budget_s:.0f} s was spent"
        if why:
            skipped.append((key, value, {"skipped": True, "why": why}))
            continue
        try:
            measured.append((key, value, *siss_run([f"{key}={value}"])))
        except Exception as err:  # OOM, or a knob this device cannot do
            if base.device.type == "cuda":
                torch.cuda.empty_cache()
            skipped.append((key, value, {"error": f"{type(err).__name__}: {err}"[:500]}))
    second, _ = siss_run() if measured else (first, None)
    b_sps = (first["seconds_per_step"] + second["seconds_per_step"]) / 2
    b_peak = (first["peak_mb"] + second["peak_mb"]) / 2
    base_line = dict(method="siss", baseline_seconds_per_step=round(b_sps, 4), baseline_peak_mb=round(b_peak, 1),
                     baseline_runs=[round(first["seconds_per_step"], 4), round(second["seconds_per_step"], 4)],
                     **common)
    for key, value, extra in skipped:
        emit(BENCH, "knob_effect", None, "x speedup", knob=key, knob_value=value, **extra, **base_line)
    for key, value, m, overrides in measured:
        sps = m["seconds_per_step"]
        emit(BENCH, "knob_effect", round(b_sps / sps, 4), "x speedup (baseline s/step / knob s/step)", knob=key,
             knob_value=value, seconds_per_step=round(sps, 4), peak_mb=m["peak_mb"], speedup=round(b_sps / sps, 4),
             memory_ratio=round(m["peak_mb"] / b_peak, 4) if b_peak else None,
             warmup_seconds=round(m["warmup_seconds"], 3), peak_kind=m["peak_kind"], overrides=overrides,
             **base_line)


def run(plan: Plan) -> dict:
    import torch

    from erasecli.models.registry import quiet_loading

    quiet_loading()
    try:
        t0 = time.perf_counter()
        comps = build_components(plan.scale, plan.latent, device=str(plan.device) if plan.device.type == "cuda"
                                 else "cpu", dtype=plan.dtype if plan.arch == "flux" else None)
        counts = param_counts(comps)
        base = make_base(comps, plan.device, plan.dtype, f"random-{plan.scale}", plan.scale)
        build_s = time.perf_counter() - t0
        common = common_fields(plan, base)
        for name, count in counts.items():
            if plan.arch == "flux":
                about = FLUX_PARAMS_ABOUT.get(name) if plan.scale == "flux1" else None
                emit(BENCH, "component_params", count, "parameters", component=name, published_about=about,
                     **common)
                continue
            ref = SD_PARAMS[name] if plan.scale == "sd14" else None
            emit(BENCH, "component_params", count, "parameters", component=name, sd14_reference=ref,
                 matches_sd14=(count == ref) if ref else None, **common)
        emit(BENCH, "build_seconds", round(build_s, 2), "s", what=f"building the {len(comps)} components from "
             "their configs (random init) and the pipeline", **common)
        plan.started = time.perf_counter()
        results = {}
        for method in plan.methods:
            if plan.over_budget():
                emit(BENCH, "seconds_per_step", None, "s/step", method=method, skipped=True,
                     why=f"the --budget-s {plan.budget_s:.0f} s was spent", **common)
                continue
            try:
                results[method] = measure_method(method, base, plan, common)
            except Exception as err:  # a failure after the run (estimates): report it, measure the rest
                remove_adapter(base.denoiser)
                emit(BENCH, "error", None, "", method=method, error=f"{type(err).__name__}: {err}"[:500], **common)
        if plan.knobs:
            if plan.over_budget():
                emit(BENCH, "knob_effect", None, "x speedup", skipped=True,
                     why=f"the --budget-s {plan.budget_s:.0f} s was spent", **common)
            else:
                try:
                    knob_effects(base, plan, common)
                except Exception as err:  # the baseline itself failed: say so
                    remove_adapter(base.denoiser)
                    emit(BENCH, "knob_effect", None, "x speedup", error=f"{type(err).__name__}: {err}"[:500],
                         **common)
        return results
    finally:
        shutil.rmtree(plan.work, ignore_errors=True)
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(prog="python -m bench.sd_size", description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all five)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up (CUDA 3, CPU 1)")
    ap.add_argument("--latent", type=int, default=None, help="latent side (CUDA 64 = 512 px; CPU 8 = 64 px)")
    ap.add_argument("--batch", type=int, default=None, help="train.batch_size (CUDA: the recipe's; CPU 1)")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="weights (CUDA bf16, CPU fp32)")
    ap.add_argument("--knobs", action="store_true", help="measure the cost knobs on a CPU too (on by default on CUDA)")
    ap.add_argument("--no-knobs", action="store_true", help="skip the cost knobs")
    ap.add_argument("--compile", action="store_true", help="measure train.compile on a CPU too (on by default on CUDA)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new measurement after this many seconds (CPU 120, CUDA 480)")
    ap.add_argument("--reward-clip", choices=("tiny", "random"), default=None,
                    help="critic-rl's reward CLIP: the shipped tiny one (CPU default) or a random ViT-L/14 (CUDA)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: untouched; 1 steadies timings on a shared CPU)")
    ap.add_argument("--quick", action="store_true", help="seconds: components a few thousand times smaller, "
                    "latent 8, one timed step, knobs on (for tests; the figures mean nothing)")
    ap.add_argument("--arch", choices=("sd", "flux"), default="sd",
                    help="sd: SD-1.4's components (default); flux: FLUX.1 [dev]'s (a 12B transformer and T5-XXL: "
                    "34 GB of bf16 weights before activations, on a GPU)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = torch.cuda.is_available() and not a.cpu
    device = torch.device("cuda" if cuda else "cpu")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    methods = tuple(m for m in a.methods.split(",") if m)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    scale = {("sd", False): "sd14", ("sd", True): "quick", ("flux", False): "flux1", ("flux", True): "quick-flux"}
    dtype = dtypes[a.dtype or ("bf16" if cuda else "fp32")]
    if scale[a.arch, a.quick] == "flux1" and not cuda:
        need = sum(param_counts(build_components("flux1", 8, device="meta")).values()) * dtype.itemsize / 2**30
        free = free_memory_gib()
        if need > free:
            ap.error(f"FLUX.1 [dev]'s weights take {need:.0f} GiB in {str(dtype).replace('torch.', '')} and this "
                     f"machine has {free:.0f} GiB free: run it on a GPU, or add --quick for the scaled-down form")
    plan = Plan(scale=scale[a.arch, a.quick], arch=a.arch, device=device, dtype=dtype,
                latent=a.latent or (64 if cuda and not a.quick else 8),
                batch=a.batch if a.batch is not None else (None if cuda and not a.quick else 1),
                timed_steps=a.steps or (3 if cuda and not a.quick else 1), methods=methods,
                knobs=not a.no_knobs and (cuda or a.knobs or a.quick), compile=cuda or a.compile,
                budget_s=a.budget_s if a.budget_s is not None else (480.0 if cuda else 120.0),
                reward_clip=a.reward_clip or ("random" if cuda or a.quick else "tiny"),
                reduced=not cuda or a.quick, sampling_estimate=cuda or a.quick)
    run(plan)


if __name__ == "__main__":
    main()
