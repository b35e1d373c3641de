"""The recipe's schema: one frozen dataclass per section, help text (with unit) on every field, and each
section's value checks. The names of methods and rewards live here once; the registries
(erasecli.methods.METHODS, erasecli.rewards.REWARDS) are built from these tables.

Nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from erasecli.recipes.checks import (NON_EMPTY, NOT_BLANK, Check, Checks, above, at_least, at_most, between,
                                     one_of, template_of)

SCHEDULERS = ("ddim", "ddpm")
LR_SCHEDULES = ("constant", "linear", "cosine")
METHOD_NAMES = ("siss", "adaptive-siss", "ppo-alpha", "esd", "critic-rl", "uce", "rece", "ac", "sa", "receler", "mace", "ant",
                "sld", "safree")
ATTACK_NAMES = ("paraphrase", "prompt", "inversion")  # erasecli.attacks.ATTACKS is built from it
REWARD_NAMES = ("clip", "classifier")  # the registries erasecli.methods.METHODS and erasecli.rewards.REWARDS
# are built from these two tables, so a name is spelled once
LORA_PRESETS = ("attn", "xattn", "noxattn")  # target_modules words that expand to module lists (ESD subsets)

# ---------------------------------------------------------------------------------------------------
# The recipe. Help text lives in each field's metadata; `field_help()` appends the default.


@dataclass(frozen=True)
class ConceptConfig:
    """What is erased, how prompts name it, and what must stay unchanged."""

    name: str = field(
        default="",
        metadata={"help": "The concept as users say it, e.g. 'van gogh', 'digit 3', 'red'. Empty: none."},
    )
    also: tuple[str, ...] = field(
        default=(),
        metadata={"help": "More concepts erased into the same delta with `name` (repeated --concept, or "
                  "--concepts-file F --together); on the tiny base all of one kind. Empty: `name` only."},
    )
    kind: str = field(
        default="",
        metadata={
            "help": "Sort of concept: 'digit' or 'colour' on the tiny base, free text ('style', "
            "'object') elsewhere. Empty: inferred later."
        },
    )
    forget_templates: tuple[str, ...] = field(
        default=("{concept}",),
        metadata={"help": "Prompts that name the concept; each contains '{concept}', replaced by the name."},
    )
    anchor: str = field(
        default="",
        metadata={
            "help": "What forget prompts should produce instead. Empty: each template with the concept removed."
        },
    )
    retain_prompts: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Prompts whose behaviour must not change. Empty: none."},
    )

    CHECKS: ClassVar[Checks] = {"forget_templates": (NON_EMPTY, template_of("concept"))}


@dataclass(frozen=True)
class SampleConfig:
    """How images are sampled (evaluation, and the rollouts of RL methods)."""

    steps: int = field(default=25, metadata={"help": "DDIM denoising steps per image, 1 to 1000."})
    guidance: float = field(
        default=5.0,
        metadata={"help": "Classifier-free guidance scale, >= 0; 1.0 or less samples without guidance."},
    )
    eta: float = field(
        default=0.0,
        metadata={"help": "DDIM eta in [0, 1]: 0 is deterministic; > 0 adds noise (needed for per-step log-probs)."},
    )
    scheduler: str = field(default="ddim", metadata={"help": "Sampler, one of: " + ", ".join(SCHEDULERS) + "."})
    batch_size: int = field(default=16, metadata={"help": "Images per forward pass, >= 1; trades memory for speed."})
    seed: int = field(default=0, metadata={"help": "Seed of the first image; image i of a prompt uses seed + i. >= 0."})

    CHECKS: ClassVar[Checks] = {
        "steps": (at_least(1), at_most(1000)),
        "guidance": (at_least(0),),
        "eta": (between(0, 1),),
        "scheduler": (one_of(*SCHEDULERS),),
        "batch_size": (at_least(1),),
        "seed": (at_least(0),),
    }


@dataclass(frozen=True)
class LoraConfig:
    """The LoRA adapters that hold the erasure; the delta contains only these."""

    rank: int = field(default=4, metadata={"help": "LoRA rank (inner dimension of each adapter), >= 1."})
    alpha: float = field(default=4.0, metadata={"help": "LoRA alpha, > 0; adapter outputs are scaled by alpha / rank."})
    target_modules: tuple[str, ...] = field(
        default=("to_q", "to_k", "to_v", "to_out.0"),
        metadata={"help": "UNet module names (as peft matches them) that get an adapter; non-empty."},
    )
    text_encoder: bool = field(default=False, metadata={"help": "Also train a LoRA on the text encoder (AdvUnlearn's "
                                                        "choice for robust erasure); the delta then carries "
                                                        "text_encoder. keys. Training methods only."})
    text_encoder_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "out_proj"),
        metadata={"help": "Text-encoder module names that get an adapter with lora.text_encoder; non-empty."})

    CHECKS: ClassVar[Checks] = {
        "text_encoder_modules": (NON_EMPTY,),
        "rank": (at_least(1),),
        "alpha": (above(0),),
        "target_modules": (NON_EMPTY, Check(lambda v: bool(v.strip()), "non-empty", each=True)),
    }


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop shared by every method."""

    steps: int = field(default=200, metadata={"help": "Optimiser steps, >= 1 (ppo-alpha episodic: of the final run)."})
    lr: float = field(default=1e-3, metadata={"help": "Learning rate of the adapter (AdamW), > 0."})
    lr_schedule: str = field(default="constant", metadata={"help": "How the adapter's learning rate moves over "
                                                           "the steps: 'constant', or from train.lr at the first "
                                                           "step down towards 0 after the last, 'linear' or "
                                                           "'cosine' (half a cosine)."})
    batch_size: int = field(default=16, metadata={"help": "Forget pairs (and as many retain examples) per optimiser step, >= 1."})
    seed: int = field(default=0, metadata={"help": "Seed for noise, timesteps and data order, >= 0."})
    checkpoint_every: int = field(default=50, metadata={"help": "Optimiser steps between resumable checkpoints, >= 1."})
    # cost knobs: they change speed and memory, not the method (bench/sd_size.py measures each one)
    mixed_precision: str = field(default="no", metadata={"help": "Autocast each step to 'bf16' or 'fp16' ('no': "
                                                         "fp32, or the weights' dtype for a half-precision base). "
                                                         "The adapter stays fp32; fp16 has no loss scaling, so "
                                                         "prefer bf16 where the device has it."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute UNet activations in the "
                                                                  "backward pass: less memory, ~30% more time."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the UNet (slow first steps; pays off on "
                                                   "long GPU runs)."})
    cache_text_embeds: bool = field(default=True, metadata={"help": "Encode the prompts once (true) or with the "
                                                            "text encoder at every step (false; siss-family, esd)."})

    CHECKS: ClassVar[Checks] = {
        "mixed_precision": (one_of("no", "bf16", "fp16"),),
        "steps": (at_least(1),),
        "lr": (above(0),),
        "lr_schedule": (one_of(*LR_SCHEDULES),),
        "batch_size": (at_least(1),),
        "seed": (at_least(0),),
        "checkpoint_every": (at_least(1),),
    }


@dataclass(frozen=True)
class DataConfig:
    """The forget / anchor / retain sets every method trains on (docs/methods.md, "Shared pieces")."""

    images_per_prompt: int = field(
        default=8, metadata={"help": "Images sampled from the base per forget prompt (and as many anchors), >= 1."})
    retain_images_per_prompt: int = field(
        default=4, metadata={"help": "Images sampled from the base per retain prompt, >= 0 (0: no retain term)."})
    seed: int = field(default=0, metadata={"help": "Seed of the first sampled training image, >= 0."})
    forget_dir: str = field(
        default="", metadata={"help": "A folder of forget images to use instead of sampling (a .txt file beside an "
                              "image holds its prompt; else forget prompts in turn). Empty: sample."})
    anchor_dir: str = field(default="", metadata={"help": "A folder of anchor images, as forget_dir. Empty: sample."})
    retain_dir: str = field(default="", metadata={"help": "A folder of retain images, as forget_dir. Empty: sample."})
    uncond_fraction: float = field(
        default=0.1, metadata={"help": "Share of retain examples trained with the empty prompt, in [0, 1], so the "
                               "unconditional prediction that guidance uses stays the base's [ours]."})

    CHECKS: ClassVar[Checks] = {
        "images_per_prompt": (at_least(1),),
        "retain_images_per_prompt": (at_least(0),),
        "seed": (at_least(0),),
        "uncond_fraction": (between(0, 1),),
    }


@dataclass(frozen=True)
class SissConfig:
    """SISS, shared by siss, adaptive-siss and ppo-alpha (docs/methods.md, "siss")."""

    lam: float = field(
        default=0.5, metadata={"help": "lambda: probability that the noisy input comes from the forget image, in "
                               "(0, 1). Fixed for siss; the start value for ppo-alpha."})
    objective: str = field(
        default="surgery", metadata={"help": "'surgery' (reference code: g_x - s/|g_a| g_a, clipped) or "
                                     "'weighted' (the paper's written objective)."})
    scaling_norm: float = field(
        default=0.02, metadata={"help": "s: norm of the forget (ascent) part of the surgery update, > 0. The reference advises about 10% of the gradient norm of naive deletion; 0.02 suits the tiny base."})
    clip_norm: float = field(default=1.0, metadata={"help": "Clip the total update to this norm, > 0."})
    superfactor: float = field(
        default=0.0, metadata={"help": "s in the weighted objective n/(n-k) L_x - (1+s) k/(n-k) L_a, >= 0."})
    retain_weight: float = field(
        default=3.0, metadata={"help": "Weight of the retain-preservation term L_r, >= 0 [ours]."})
    lambda_min: float = field(default=0.05, metadata={"help": "Lowest lambda adaptive-siss and ppo-alpha may pick."})
    lambda_max: float = field(default=0.95, metadata={"help": "Highest lambda adaptive-siss and ppo-alpha may pick."})
    retain_target: str = field(default="noise", metadata={"help": "What L_r fits on the retain images: 'noise' "
                                                          "(the denoising loss) or 'base' (the frozen base's own "
                                                          "prediction at the same input: distillation) [ours]."})

    CHECKS: ClassVar[Checks] = {
        "retain_target": (one_of("noise", "base"),),
        "lam": (between(0, 1, open_lo=True, open_hi=True),),
        "objective": (one_of("surgery", "weighted"),),
        "scaling_norm": (above(0),),
        "clip_norm": (above(0),),
        "superfactor": (at_least(0),),
        "retain_weight": (at_least(0),),
        "lambda_min": (between(0, 1, open_lo=True, open_hi=True),),
        "lambda_max": (between(0, 1, open_lo=True, open_hi=True),),
    }


@dataclass(frozen=True)
class AdaptiveConfig:
    """adaptive-siss: the inference network q_phi(z | f) over lambda."""

    hidden: int = field(default=64, metadata={"help": "Width of q_phi's two hidden layers (tanh), >= 1."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of q_phi, > 0."})
    beta: float = field(default=0.01, metadata={"help": "Weight of KL(q_phi(z|f) || N(0, 1)), >= 0."})

    CHECKS: ClassVar[Checks] = {"hidden": (at_least(1),), "lr": (above(0),), "beta": (at_least(0),)}


@dataclass(frozen=True)
class PpoConfig:
    """ppo-alpha: a PPO agent picks lambda at every SISS step."""

    mode: str = field(default="online", metadata={"help": "'online' (one run, PPO every update_every steps) or "
                                                  "'episodic' (episodes reset the adapter; a final run makes the delta)."})
    update_every: int = field(default=16, metadata={"help": "Environment steps per PPO update (the window), >= 2."})
    epochs: int = field(default=4, metadata={"help": "PPO epochs over each window, >= 1."})
    clip: float = field(default=0.2, metadata={"help": "PPO ratio clip, in (0, 1)."})
    gamma: float = field(default=0.99, metadata={"help": "Discount, in [0, 1]."})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda, in [0, 1]."})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of policy and value, > 0."})
    entropy_coef: float = field(default=0.01, metadata={"help": "Entropy bonus weight, >= 0."})
    smooth_beta: float = field(default=0.1, metadata={"help": "beta_s: penalty on (lambda_k - lambda_{k-1})^2, >= 0."})
    hidden: int = field(default=64, metadata={"help": "Width of the two hidden layers (tanh), >= 1."})
    episodes: int = field(default=3, metadata={"help": "Episodic mode: training episodes before the final run, >= 1."})
    episode_steps: int = field(default=60, metadata={"help": "Episodic mode: SISS steps per episode, >= 2."})

    CHECKS: ClassVar[Checks] = {
        "mode": (one_of("online", "episodic"),),
        "update_every": (at_least(2),),
        "epochs": (at_least(1),),
        "clip": (between(0, 1, open_lo=True, open_hi=True),),
        "gamma": (between(0, 1),),
        "gae_lambda": (between(0, 1),),
        "lr": (above(0),),
        "entropy_coef": (at_least(0),),
        "smooth_beta": (at_least(0),),
        "hidden": (at_least(1),),
        "episodes": (at_least(1),),
        "episode_steps": (at_least(2),),
    }


@dataclass(frozen=True)
class EsdConfig:
    """esd: the baseline of Gandikota et al. 2023 (ESD-x: lora.target_modules [xattn]; ESD-u: [noxattn])."""

    negative_guidance: float = field(default=1.0, metadata={"help": "eta: how far past the anchor to push, >= 0."})
    anchor: str = field(default="empty", metadata={"help": "'empty' (original ESD: erase towards the unconditional "
                                                   "prediction) or 'prompt' (towards each forget prompt's anchor)."})
    guide_from: str = field(default="empty", metadata={"help": "What the concept's direction is measured from: "
                                                      "'empty' (e_c - e_0, the original ESD) or 'anchor' "
                                                      "(e_c - e_anchor: only what the prompt adds to its anchor, "
                                                      "so the colour of a 'red three' is not pushed away with "
                                                      "the three; needs esd.anchor: prompt) [ours]."})
    xt_source: str = field(default="sample", metadata={"help": "'sample' (x_t by partial DDIM sampling with the "
                                                       "model being trained, as ESD) or 'data' (forget latents noised "
                                                       "to t, cheaper) [ours]."})
    start_guidance: float = field(default=3.0, metadata={"help": "Guidance of the partial sampling, >= 0."})
    retain_weight: float = field(default=0.0, metadata={"help": "Weight of a retain-preservation term, >= 0 "
                                                        "(0 is the original ESD) [ours]."})

    CHECKS: ClassVar[Checks] = {
        "negative_guidance": (at_least(0),),
        "anchor": (one_of("empty", "prompt"),),
        "guide_from": (one_of("empty", "anchor"),),
        "xt_source": (one_of("sample", "data"),),
        "start_guidance": (at_least(0),),
        "retain_weight": (at_least(0),),
    }


@dataclass(frozen=True)
class AcConfig:
    """ac: Ablating Concepts (Kumari et al. 2023): the concept prompt, on the anchor prompt's images, predicts
    what the anchor prompt predicts (cross-attention k / v: lora.target_modules [attn2.to_k, attn2.to_v])."""

    loss: str = field(default="model", metadata={"help": "'model' (the target is the model's own prediction "
                                                 "under the anchor prompt, gradient stopped: the paper's default) "
                                                 "or 'noise' (the sampled noise: the diffusion loss on anchor "
                                                 "images captioned with the concept prompt)."})
    target_from: str = field(default="model", metadata={"help": "Whose prediction the model-based target is: "
                                                        "'model' (the one being trained, as the paper) or 'base' "
                                                        "(the frozen base, a fixed target) [ours]."})
    prior_weight: float = field(default=0.0, metadata={"help": "Weight of the paper's prior preservation: the "
                                                       "diffusion loss on anchor images under their own prompt, "
                                                       ">= 0."})
    retain_weight: float = field(default=0.0, metadata={"help": "Weight of a retain-preservation term on the "
                                                        "retain prompts' images, >= 0 [ours]."})

    CHECKS: ClassVar[Checks] = {
        "loss": (one_of("model", "noise"),),
        "target_from": (one_of("model", "base"),),
        "prior_weight": (at_least(0),),
        "retain_weight": (at_least(0),),
    }


@dataclass(frozen=True)
class SaConfig:
    """sa: Selective Amnesia (Heng & Soh 2023): the diffusion loss of surrogate images (the base's images of the
    anchor prompts) under the forget prompts, generative replay of the base's retain images, and an EWC penalty
    weighted by the base's diagonal Fisher information."""

    ewc_lambda: float = field(default=1.0e4, metadata={"help": "Weight of the EWC penalty sum F (theta - "
                                                       "theta*)^2, >= 0 (F is the Fisher of the per-sample mean "
                                                       "squared error, so its scale is small)."})
    replay_weight: float = field(default=1.0, metadata={"help": "Weight of the generative replay term (the "
                                                        "diffusion loss on the base's retain images), >= 0."})
    surrogate: str = field(default="anchor", metadata={"help": "The surrogate images learned under the forget "
                                                    "prompts: 'anchor' (the base's images of each forget prompt's "
                                                    "anchor prompt) or 'noise' (uniform-noise images, the paper's "
                                                    "choice for its digit data sets)."})
    fisher_samples: int = field(default=200, metadata={"help": "Base samples the diagonal Fisher is estimated "
                                                       "from (replay images, each at its own t and noise; cached "
                                                       "in $ERASECLI_CACHE/fisher), >= 1."})

    CHECKS: ClassVar[Checks] = {
        "ewc_lambda": (at_least(0),),
        "replay_weight": (at_least(0),),
        "fisher_samples": (at_least(1),),
        "surrogate": (one_of("anchor", "noise"),),
    }


@dataclass(frozen=True)
class RecelerConfig(EsdConfig):
    """receler (Huang et al. 2024): an eraser (a LoRA on every cross-attention's output) trained with ESD's
    objective (the esd fields, the paper's values by default) and a concept-localized regularizer;
    `robust.enabled` adds its adversarial prompt learning."""

    reg_weight: float = field(default=0.1, metadata={"help": "Weight of the concept-localized regularizer (the "
                                                     "eraser's output outside the concept's attention mask), >= 0."})
    mask_threshold: float = field(default=0.1, metadata={"help": "A query is in the concept's mask where its "
                                                         "attention to the concept's words exceeds this share of the "
                                                         "layer's largest, in [0, 1)."})

    CHECKS: ClassVar[Checks] = {
        **EsdConfig.CHECKS,
        "reg_weight": (at_least(0),),
        "mask_threshold": (between(0, 1, open_hi=True),),
    }


@dataclass(frozen=True)
class MaceConfig:
    """mace (Lu et al. 2024): a closed-form refinement of the cross-attention k / v, one LoRA per concept trained
    (train.steps, train.lr, lora.rank) to take the concept's attention out of its mask, and the closed-form fusion
    of the concepts' LoRAs into one delta."""

    cfr: bool = field(default=True, metadata={"help": "Run the closed-form refinement first (uce's solve on the "
                                              "concept's tokens and the ones after them)."})
    cfr_lam: float = field(default=0.5, metadata={"help": "lambda of the refinement's solve, > 0."})
    cfr_preserve: float = field(default=1.0, metadata={"help": "Weight of keeping the retain prompts' outputs in "
                                                       "the refinement, >= 0."})
    mask: str = field(default="attention", metadata={"help": "Where the concept is in an image: 'pixels' (tiny "
                                                     "bases: the digit's or colour's own pixels) or 'attention' "
                                                     "(the base's cross-attention to the concept's words, "
                                                     "thresholded; the fallback for a base without a segmenter)."})
    mask_threshold: float = field(default=0.3, metadata={"help": "'pixels': brightness above which a pixel is "
                                                         "drawn; 'attention': share of the largest attention, "
                                                         "in [0, 1)."})
    images: int = field(default=8, metadata={"help": "Base images per forget prompt that the LoRAs train on, >= 1."})
    fuse_preserve: float = field(default=1.0, metadata={"help": "Weight of keeping the retain prompts' keys in the "
                                                        "fusion of the LoRAs, >= 0."})
    fuse_lam: float = field(default=0.1, metadata={"help": "Ridge of the fusion's solve (keeps every key near "
                                                   "the refined one), > 0."})

    CHECKS: ClassVar[Checks] = {
        "cfr_lam": (above(0),),
        "cfr_preserve": (at_least(0),),
        "mask": (one_of("pixels", "attention"),),
        "mask_threshold": (between(0, 1, open_hi=True),),
        "images": (at_least(1),),
        "fuse_preserve": (at_least(0),),
        "fuse_lam": (above(0),),
    }


@dataclass(frozen=True)
class AntConfig:
    """ant (Li et al. 2025): in the mid-to-late denoising steps the concept prompt's prediction is trained towards
    the reversed guidance direction, in the early steps towards the base's own; a saliency map picks the modules."""

    negative_guidance: float = field(default=1.0, metadata={"help": "eta: how far the reversed direction goes "
                                                            "(target e_0 - eta (e_c - e_0)), >= 0."})
    early_share: float = field(default=0.3, metadata={"help": "Share of a trajectory's steps (from pure noise) "
                                                      "that are early: there the base's prediction is kept, "
                                                      "in [0, 1)."})
    early_weight: float = field(default=1.0, metadata={"help": "Weight of the early steps' preservation loss, "
                                                       ">= 0."})
    saliency: float = field(default=0.5, metadata={"help": "Share of the adapted modules that train, the most "
                                                   "salient first (1: all), in (0, 1]."})
    saliency_batches: int = field(default=4, metadata={"help": "Batches the saliency map averages, >= 1."})
    xt_source: str = field(default="sample", metadata={"help": "Where x_t comes from: 'sample' (a partial "
                                                       "trajectory of the forget prompt, the paper's) or 'data' "
                                                       "(forget latents noised to a random t, no sampling per "
                                                       "step) [ours]."})
    start_guidance: float = field(default=3.0, metadata={"help": "Guidance of the partial sampling that makes "
                                                         "x_t, >= 0."})
    retain_weight: float = field(default=0.0, metadata={"help": "Weight of a retain-preservation term on the "
                                                        "retain prompts' images, >= 0 [ours]."})
    guide_from: str = field(default="empty", metadata={"help": "What the reversed direction is measured from: "
                            "'empty' (the empty prompt, the paper's: target e_0 - eta (e_c - e_0)) or 'anchor' (each "
                            "forget prompt's anchor: only what the prompt adds to it, e.g. a style, is reversed) "
                            "[anchor: ours]."})

    CHECKS: ClassVar[Checks] = {
        "xt_source": (one_of("sample", "data"),),
        "guide_from": (one_of("empty", "anchor"),),
        "negative_guidance": (at_least(0),),
        "early_share": (between(0, 1, open_hi=True),),
        "early_weight": (at_least(0),),
        "saliency": (between(0, 1, open_lo=True),),
        "saliency_batches": (at_least(1),),
        "start_guidance": (at_least(0),),
        "retain_weight": (at_least(0),),
    }


def _none_or(check: Check) -> Check:
    return Check(lambda v: v is None or check.ok(v), check.need + " (or empty: the preset's)")


SLD_PRESETS = ("weak", "medium", "strong", "max")  # erasecli.diffusion.guard.PRESETS holds their numbers


@dataclass(frozen=True)
class SldConfig:
    """sld: Safe Latent Diffusion (Schramowski et al. 2023), a guard: at sampling time the prediction is pushed
    away from the safety concept's where the two are close. No weights change; `erase unlearn` writes a guard
    folder that sample / evaluate / attack take with --guard. A value left empty comes from the preset."""

    preset: str = field(default="medium", metadata={"help": "The paper's configuration: weak, medium, strong or "
                                                    "max; the fields below override single values."})
    concept_text: str = field(default="", metadata={"help": "The safety concept's text. Empty: on the tiny world "
                                                    "'a handwritten digit three' (a digit) or 'a red digit' (a "
                                                    "colour), elsewhere the concept's name; several concepts "
                                                    "are joined with ', '."})
    guidance_scale: float | None = field(default=None, metadata={"help": "s_S, the safety guidance scale, >= 0."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Steps without safety guidance at the start, "
                                                            "counted in a 50-step trajectory (the paper's; scaled to "
                                                            "sample.steps), 0 to 50."})
    threshold: float | None = field(default=None, metadata={"help": "lambda: elements where prompt minus safety "
                                                           "prediction is below it are guided."})
    momentum_scale: float | None = field(default=None, metadata={"help": "s_m, weight of the momentum, >= 0."})
    mom_beta: float | None = field(default=None, metadata={"help": "beta_m, how the momentum builds up, in [0, 1)."})

    CHECKS: ClassVar[Checks] = {
        "preset": (one_of(*SLD_PRESETS),),
        "guidance_scale": (_none_or(at_least(0)),),
        "warmup_steps": (_none_or(between(0, 50)),),
        "momentum_scale": (_none_or(at_least(0)),),
        "mom_beta": (_none_or(between(0, 1, open_hi=True)),),
    }


@dataclass(frozen=True)
class SafreeConfig:
    """safree: SAFREE (Yoon et al. 2025), a guard: the prompt tokens that bring it near the concept subspace have
    their states projected away from it, for the first steps of each trajectory (self-validating filtering).
    No weights change; `erase unlearn` writes a guard folder that sample / evaluate / attack take with --guard."""

    keywords: tuple[str, ...] = field(default=(), metadata={"help": "Texts whose pooled embeddings span the concept "
                                                            "subspace. Empty: on the tiny world the digit's or "
                                                            "colour's words (e.g. 'three', 'digit three', 'a "
                                                            "handwritten digit three'), elsewhere the concept's "
                                                            "names."})
    alpha: float = field(default=0.01, metadata={"help": "Trigger margin: a token is filtered when masking it moves "
                                                 "the prompt (1 + alpha) times further from the subspace than "
                                                 "masking the others does on average, >= 0."})
    svf: bool = field(default=True, metadata={"help": "Self-validating filtering: use the filtered states for the "
                                              "first steps only, more of them the more the filter changes the "
                                              "prompt. false: at every step."})
    svf_steps: int = field(default=10, metadata={"help": "The most steps that use the filtered states, counted in "
                                                 "a 50-step trajectory (scaled to sample.steps), 0 to 50."})
    svf_midpoint: float = field(default=5.333, metadata={"help": "t0 of the step count's sigmoid in 10 beta (the "
                                                         "reference's 5.333; 5.5 for artists)."})
    svf_sharpness: float = field(default=2.5, metadata={"help": "k of the step count's sigmoid (the reference's "
                                                        "2.5; 3.5 for artists), > 0."})
    positions: str = field(default="triggers", metadata={"help": "'triggers': only the detected tokens' states "
                                                         "change (the paper); 'after': every later state (EOS and "
                                                         "padding included, which a causal text encoder lets read "
                                                         "the trigger) also loses the concept subspace [ours]."})

    CHECKS: ClassVar[Checks] = {
        "keywords": (Check(lambda v: bool(v.strip()), "non-empty text", each=True),),
        "alpha": (at_least(0),),
        "svf_steps": (between(0, 50),),
        "svf_sharpness": (above(0),),
        "positions": (one_of("triggers", "after"),),
    }


@dataclass(frozen=True)
class UceConfig:
    """uce and rece: closed-form edits of every cross-attention key / value projection (Gandikota et al. 2024;
    RECE, Gong et al. 2024), written as an exact LoRA. No training loop, no sampled images."""

    lam: float = field(default=0.5, metadata={"help": "lambda: weight that keeps each projection near the base "
                                              "one (lambda W0 and lambda I in the solve), > 0."})
    erase_scale: float = field(default=1.0, metadata={"help": "s_e: weight of mapping each erased embedding to "
                                                      "its guide's output, > 0."})
    preserve_scale: float = field(default=1.0, metadata={"help": "s_p: weight of keeping the retain prompts' "
                                                         "outputs, >= 0."})
    preserve_empty: bool = field(default=False, metadata={"help": "Also keep the empty prompt's states (the "
                                 "negative of classifier-free guidance): retain images closer to the base's, a "
                                 "weaker erasure when several concepts share one delta [ours]."})
    guide: str = field(default="anchor", metadata={"help": "What an erased prompt should produce instead: "
                                                   "'anchor' (its anchor prompt: the prompt without the concept, "
                                                   "the empty prompt for a bare name), 'empty', any text, or 'swap:WORD' (the prompt with "
                                                   "the concept's words replaced by WORD, e.g. swap:zero; what "
                                                   "several digits or colours in one delta need) [swap: ours]."})
    tokens: str = field(default="padding", metadata={"help": "Which token embeddings of a forget prompt are "
                                                     "erased: 'padding' (from the first token that differs from "
                                                     "its guide through the padding, as UCE's 2023 code) or "
                                                     "'concept' (those tokens up to the end-of-text token)."})
    modules: tuple[str, ...] = field(default=("to_k", "to_v"), metadata={"help": "Cross-attention (attn2) "
                                     "projections edited: to_k and / or to_v."})
    pooled: bool = field(default=True, metadata={"help": "Bases with a pooled text input (SDXL): also edit the "
                         "layer that reads it (add_embedding.linear_1, its pooled columns) by the same closed form, "
                         "each forget prompt's pooled embedding mapped to its guide's, the retain prompts' kept; "
                         "no effect on SD [ours]."})
    rounds: int = field(default=3, metadata={"help": "rece: rounds of deriving the embeddings that bring the "
                                             "concept back from the edited model and erasing them too, >= 1."})
    rece_lam: float = field(default=0.1, metadata={"help": "rece: ridge weight mu of that derivation, > 0 "
                                                   "(larger: adversarial embeddings of smaller norm)."})
    rece_scale: float = field(default=1.0, metadata={"help": "rece: s_e of the derived embeddings, > 0."})
    robust: str = field(default="none", metadata={"help": "Robust closed form (uce and rece) [ours]: rounds "
                        "that attack the edited model with soft tokens ('inversion': one token in place of the "
                        "concept's words; 'prefix': tokens before each forget prompt; 'both') and add the text "
                        "states they find to the erased set; 'none' is off."})
    robust_rounds: int = field(default=3, metadata={"help": "Robust: attack-and-re-solve rounds, >= 1."})
    robust_steps: int = field(default=40, metadata={"help": "Robust: Adam steps of each round's attack (warm-"
                              "started from the last round's tokens), >= 1."})
    robust_lr: float = field(default=0.02, metadata={"help": "Robust: Adam learning rate of the soft tokens, > 0."})
    robust_batch: int = field(default=16, metadata={"help": "Robust: target images per attack step, >= 1."})
    robust_tokens: int = field(default=3, metadata={"help": "Robust, prefix: soft tokens before each prompt, >= 1."})
    robust_images: int = field(default=4, metadata={"help": "Robust: the base's images of each forget prompt that "
                               "the attacks reconstruct, >= 1."})
    robust_scale: float = field(default=1.0, metadata={"help": "Robust: s_e of the found states, > 0."})
    rank: int = field(default=0, metadata={"help": "LoRA rank of the delta: N writes the best rank-N approximation "
                      "of each edited projection's exact change (SVD; relative errors in train_summary.json and "
                      "delta.json); 0 (default) or N >= the exact rank writes the exact edit."})
    robust_project: int = field(default=0, metadata={"help": "Robust: also remove from every edited projection's "
                                "input the top this-many directions of erased-minus-guide states, >= 0 (0: off)."})

    CHECKS: ClassVar[Checks] = {
        "lam": (above(0),),
        "erase_scale": (above(0),),
        "preserve_scale": (at_least(0),),
        "guide": (NOT_BLANK,),
        "tokens": (one_of("padding", "concept"),),
        "modules": (NON_EMPTY, Check(lambda v: all(m in ("to_k", "to_v") for m in v), "to_k and / or to_v")),
        "rounds": (at_least(1),),
        "rece_lam": (above(0),),
        "rece_scale": (above(0),),
        "robust": (one_of("none", "inversion", "prefix", "both"),),
        "robust_rounds": (at_least(1),),
        "robust_steps": (at_least(1),),
        "robust_lr": (above(0),),
        "robust_batch": (at_least(1),),
        "robust_tokens": (at_least(1),),
        "robust_images": (at_least(1),),
        "robust_scale": (above(0),),
        "robust_project": (at_least(0),),
        "rank": (at_least(0),),
    }


@dataclass(frozen=True)
class CriticRlConfig:
    """critic-rl and `erase train-critic`: rollouts, rewards, the critic V_phi(x_t, t, c), PPO (docs/methods.md, "critic-rl")."""

    path: str = field(default="", metadata={"help": "A critic folder from `erase train-critic` to reuse (--critic). "
                                            "Empty: critic-rl trains one first."})
    reward: str = field(default="clip", metadata={"help": "Reward: 'clip' (CLIP similarity; the tiny CLIP on the "
                                                  "tiny base) or 'classifier' (tiny base only; the evaluation judge)."})
    clip_model: str = field(default="openai/clip-vit-large-patch14",
                            metadata={"help": "CLIP for the clip reward on non-tiny bases: hub id or folder."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain prompts' utility reward, >= 0 [ours]."})
    keep_weight: float = field(default=0.0, metadata={"help": "Weight of a forget prompt's reward for what it names "
                                                      "besides the concept (the colour of 'a red three'; elsewhere "
                                                      "its anchor prompt), >= 0 [ours]."})
    zero_shot: bool = field(default=False, metadata={"help": "clip reward: score the concept as CLIP's zero-shot "
                                                     "probability against critic.contrast (the other digits or "
                                                     "colours on the tiny base) instead of the raw cosine [ours]."})
    temperature: float = field(default=1.0, metadata={"help": "critic.zero_shot: divides CLIP's logit scale; "
                                                      "> 1 softens the probability so the reward keeps a slope "
                                                      "after CLIP stops seeing the concept, > 0 [ours]."})
    contrast: tuple[str, ...] = field(default=(), metadata={"help": "Other concepts the zero-shot score competes "
                                                            "with, e.g. [monet, picasso] (tiny base: automatic)."})
    steps: int = field(default=10, metadata={"help": "DDIM steps of a rollout (the MDP's horizon), >= 2."})
    eta: float = field(default=1.0, metadata={"help": "DDIM eta of rollouts, in (0, 1]: > 0 so steps have log-probs."})
    prompts_per_step: int = field(default=4, metadata={"help": "Prompts per training step, >= 1; "
                                                       "critic.retain_prompts of them retain, the rest forget."})
    retain_prompts: float = field(default=0.5, metadata={"help": "Fraction of each step's rollout prompts drawn "
                                                         "from the retain set (rounded down), in [0, 1); 0: "
                                                         "forget prompts only, retain kept by critic.retain_loss "
                                                         "[ours]."})
    samples_per_prompt: int = field(default=4, metadata={"help": "Rollouts per prompt (advantages are normalised "
                                                         "per prompt), >= 2."})
    per_step: bool = field(default=True, metadata={"help": "true: per-step advantages from the critic by GAE; false: "
                                                   "terminal reward only (DDPO, batch-normalised R) [ablation]."})
    input: str = field(default="noisy", metadata={"help": "The critic sees 'noisy' latents x_t or the predicted "
                                                  "'clean' latent x0_hat [ablation]."})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda over denoising steps, in [0, 1]; 1.0 is "
                                                      "the Monte-Carlo baseline R - V(x_t)."})
    clip_range: float = field(default=1e-3, metadata={"help": "PPO ratio clip, > 0 (DDPO uses 1e-4 with log-probs "
                                                      "averaged over dims, as here)."})
    inner_epochs: int = field(default=2, metadata={"help": "PPO epochs over each batch of trajectories, >= 1."})
    timestep_fraction: float = field(default=1.0, metadata={"help": "Fraction of each rollout's steps (drawn anew "
                                                            "per inner epoch, rounded up) that PPO trains on, in "
                                                            "(0, 1]; < 1 lets rollouts be longer at the same cost "
                                                            "(DDPO's timestep_fraction)."})
    timesteps_per_pass: int = field(default=1, metadata={"help": "Denoising steps whose log-probs PPO recomputes "
                                    "in one UNet pass (a batch of steps x rollouts x 2 with guidance), >= 1: the same "
                                    "loss and gradient, faster on a CPU at small sizes, more memory [ours]."})
    kl_weight: float = field(default=0.0, metadata={"help": "Weight of the per-step KL to the base kernel, >= 0."})
    retain_loss: float = field(default=0.0, metadata={"help": "Weight of a denoising loss on the base's retain "
                                                      "images added to each PPO update (0: off; > 0 samples "
                                                      "data.* like siss) [ours]."})
    anchor_loss: float = field(default=0.0, metadata={"help": "Weight of a denoising loss on the base's anchor "
                                                      "images under their forget prompts (the image 'a red digit' "
                                                      "drew, captioned 'a red three'), added to each PPO update "
                                                      "(0: off; > 0 samples data.*) [ours]."})
    kl_prompts: str = field(default="all", metadata={"help": "Rollouts the KL applies to: 'all', or 'retain' (only "
                                                     "retain prompts' chains stay near the base's) [ours]."})
    robust_input: str = field(default="prompt", metadata={"help": "robust.enabled: the text c the critic sees for "
                              "a chain rolled out under the inner attack's adversarial states: 'prompt', the plain "
                              "forget prompt's pooled embedding (the prompt the reward scores), or 'states', the "
                              "pooled adversarial states (the critic learns their values from its refits) [ours]."})
    width: int = field(default=64, metadata={"help": "Critic conv width, >= 8."})
    blocks: int = field(default=3, metadata={"help": "Critic FiLM residual blocks, >= 1."})
    lr: float = field(default=1e-3, metadata={"help": "Critic Adam learning rate, > 0."})
    train_trajectories: int = field(default=128, metadata={"help": "train-critic: base trajectories sampled, >= 4."})
    train_epochs: int = field(default=30, metadata={"help": "train-critic: epochs over those trajectories, >= 1."})
    updates_per_step: int = field(default=2, metadata={"help": "critic-rl: critic updates on each step's fresh "
                                                       "trajectories, >= 0."})
    stop_reward: float | None = field(default=None, metadata={"help": "critic-rl: stop before train.steps once the "
                                                              "forget reward's mean over the last "
                                                              "critic.stop_window steps reaches this (e.g. -0.05 "
                                                              "with the zero-shot score); empty: run every step "
                                                              "[ours]."})
    stop_window: int = field(default=10, metadata={"help": "Steps the critic.stop_reward mean runs over, >= 1."})

    CHECKS: ClassVar[Checks] = {
        "reward": (one_of(*REWARD_NAMES),),
        "clip_model": (NOT_BLANK,),
        "retain_weight": (at_least(0),),
        "keep_weight": (at_least(0),),
        "anchor_loss": (at_least(0),),
        "temperature": (above(0),),
        "steps": (at_least(2), at_most(1000)),
        "eta": (between(0, 1, open_lo=True),),
        "prompts_per_step": (at_least(1),),
        "retain_prompts": (between(0, 1, open_hi=True),),
        "samples_per_prompt": (at_least(2),),
        "input": (one_of("noisy", "clean"),),
        "gae_lambda": (between(0, 1),),
        "clip_range": (above(0),),
        "inner_epochs": (at_least(1),),
        "timesteps_per_pass": (at_least(1),),
        "timestep_fraction": (between(0, 1, open_lo=True),),
        "kl_weight": (at_least(0),),
        "kl_prompts": (one_of("all", "retain"),),
        "robust_input": (one_of("prompt", "states"),),
        "retain_loss": (at_least(0),),
        "width": (at_least(8),),
        "blocks": (at_least(1),),
        "lr": (above(0),),
        "train_trajectories": (at_least(4),),
        "train_epochs": (at_least(1),),
        "updates_per_step": (at_least(0),),
        "stop_window": (at_least(1),),
    }


@dataclass(frozen=True)
class EvalConfig:
    """How `erase evaluate` measures an erasure (UnlearnCanvas definitions; docs/methods.md, "Evaluation protocol")."""

    metrics: tuple[str, ...] = field(
        default=("ua", "ira", "cra", "cra_forget", "clip_score", "fid", "kid", "fid_forget"),
        metadata={"help": "Metrics to compute; `erase evaluate --metrics` lists the valid names."},
    )
    samples_per_prompt: int = field(default=4, metadata={"help": "Images per prompt and model, >= 1."})
    seed: int = field(
        default=1000, metadata={"help": "Seed of the first image per prompt (apart from training seeds), >= 0."}
    )
    judge: str = field(
        default="auto",
        metadata={"help": "'auto' (the shipped classifier on the tiny base, CLIP zero-shot elsewhere), "
                  "'classifier' or 'clip'."},
    )
    clip_model: str = field(
        default="openai/clip-vit-large-patch14",
        metadata={"help": "CLIP for zero-shot judging and CLIP score on non-tiny bases (the tiny base uses its "
                  "own tiny CLIP): hub id or local folder."},
    )
    in_domain: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Other concepts of the erased concept's kind (IRA); derived on the tiny base."},
    )
    cross_domain: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Concepts of the other kind (CRA), e.g. objects when a style is erased."},
    )
    cross_template: str = field(
        default="a photo of {concept}",
        metadata={"help": "Prompt for each cross-domain concept; contains '{concept}'."},
    )

    CHECKS: ClassVar[Checks] = {
        "metrics": (NON_EMPTY,),
        "samples_per_prompt": (at_least(1),),
        "seed": (at_least(0),),
        "judge": (one_of("auto", "classifier", "clip"),),
        "clip_model": (NOT_BLANK,),
        "cross_template": (Check(lambda v: "{concept}" in v, "a template containing '{concept}'"),),
    }


@dataclass(frozen=True)
class AttackConfig:
    """`erase attack` and the robustness metrics of `erase evaluate`: does the erased concept come back?"""

    attacks: tuple[str, ...] = field(default=ATTACK_NAMES, metadata={"help": "Attacks `erase attack` runs: "
                                                                   + ", ".join(ATTACK_NAMES) + "."})
    budget: float = field(default=1.0, metadata={"help": "Scales every attack's optimisation steps and restarts "
                                                 "(--budget), > 0."})
    samples: int = field(default=4, metadata={"help": "Images drawn per prompt to judge an attack, >= 1."})
    threshold: float = field(default=0.5, metadata={"help": "A prompt succeeds when at least this share of its "
                                                    "images is judged as the concept, in (0, 1]."})
    seed: int = field(default=2000, metadata={"help": "Seed of the first judged image (image i: seed + i); the "
                                              "attacks' own randomness derives from it, >= 0."})
    targets: int = field(default=4, metadata={"help": "Base images of each forget prompt that the prompt and "
                                              "inversion attacks fit to, >= 1."})
    prompt_tokens: int = field(default=3, metadata={"help": "prompt: adversarial prefix tokens k (UnlearnDiffAtk "
                                                    "uses 3 for styles and objects, 5 for nudity), >= 1."})
    prompt_steps: int = field(default=40, metadata={"help": "prompt: Adam steps per restart, >= 1."})
    prompt_lr: float = field(default=0.05, metadata={"help": "prompt: Adam learning rate of the continuous "
                                                     "prefix embeddings, > 0."})
    prompt_restarts: int = field(default=2, metadata={"help": "prompt: attempts from other random tokens, >= 1."})
    prompt_batch: int = field(default=16, metadata={"help": "prompt: forget prompts attacked together in one "
                                                    "batch (each with its own prefix and draws; lower it if "
                                                    "memory runs out), >= 1."})
    prompt_check_every: int = field(default=10, metadata={"help": "prompt: steps between judging the decoded "
                                                          "prefix (the attack stops at its first success), >= 1."})
    inversion_steps: int = field(default=150, metadata={"help": "inversion: Adam steps, >= 1."})
    inversion_lr: float = field(default=0.01, metadata={"help": "inversion: Adam learning rate, > 0."})
    inversion_batch: int = field(default=8, metadata={"help": "inversion: target images per step, >= 1."})
    num_vectors: int = field(default=1, metadata={"help": "inversion: vectors of the learned token, >= 1."})
    inversion_init: str = field(default="digit", metadata={"help": "inversion: the word whose embedding the "
                                                          "learned token starts from (e.g. 'painting' for a "
                                                          "style); non-empty."})
    paraphrases: tuple[str, ...] = field(default=(), metadata={"help": "paraphrase: templates naming the "
                                                               "concept in other words, each with '{concept}' "
                                                               "(the tiny base has its own set)."})
    paraphrases_file: str = field(default="", metadata={"help": "paraphrase: a file of more such templates, one a "
                                                        "line. Empty: none."})

    CHECKS: ClassVar[Checks] = {
        "attacks": (NON_EMPTY, Check(lambda v: v in ATTACK_NAMES, "one of " + ", ".join(ATTACK_NAMES), each=True)),
        "budget": (above(0),),
        "samples": (at_least(1),),
        "threshold": (between(0, 1, open_lo=True),),
        "seed": (at_least(0),),
        "targets": (at_least(1),),
        "prompt_tokens": (at_least(1),),
        "prompt_steps": (at_least(1),),
        "prompt_lr": (above(0),),
        "prompt_restarts": (at_least(1),),
        "prompt_batch": (at_least(1),),
        "prompt_check_every": (at_least(1),),
        "inversion_steps": (at_least(1),),
        "inversion_lr": (above(0),),
        "inversion_batch": (at_least(1),),
        "num_vectors": (at_least(1),),
        "inversion_init": (NOT_BLANK,),
        "paraphrases": (template_of("concept"),),
    }


ROBUST_ATTACKS = ("prefix", "inversion")


@dataclass(frozen=True)
class RobustConfig:
    """Robust erasure (adversarial training, after AdvUnlearn): every `every` steps an inner attack on the model
    being trained finds soft tokens that bring the concept back; the method's forget term then also trains on
    them. docs/methods.md, "Robust erasure"."""

    enabled: bool = field(default=False, metadata={"help": "Turn adversarial training on (every training method "
                                                   "but mace; critic-rl rolls a share robust.mix of each step's "
                                                   "forget prompts out under the attack's states)."})
    attack: str = field(default="inversion", metadata={"help": "Inner attack: 'prefix' (soft tokens before each "
                                                       "forget prompt, AdvUnlearn's) or 'inversion' (one soft "
                                                       "token in place of the concept's words, concept "
                                                       "inversion's)."})
    tokens: int = field(default=1, metadata={"help": "prefix: soft prefix tokens per forget prompt, >= 1."})
    every: int = field(default=10, metadata={"help": "Optimiser steps between inner attacks, >= 1."})
    warmup: int = field(default=50, metadata={"help": "Steps before the first inner attack, >= 0."})
    attack_steps: int = field(default=10, metadata={"help": "Adam steps of each inner attack (it starts from the "
                                                    "last one's tokens), >= 1."})
    attack_lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the soft tokens, > 0."})
    attack_batch: int = field(default=16, metadata={"help": "Forget images per inner-attack step, >= 1."})
    mix: float = field(default=0.5, metadata={"help": "Share of the forget images whose prompt is the adversarial "
                                              "one after each inner attack (drawn anew each time), in (0, 1]; "
                                              "critic-rl: also of each step's forget prompts rolled out under it."})

    CHECKS: ClassVar[Checks] = {
        "attack": (one_of(*ROBUST_ATTACKS),),
        "tokens": (at_least(1),),
        "every": (at_least(1),),
        "warmup": (at_least(0),),
        "attack_steps": (at_least(1),),
        "attack_lr": (above(0),),
        "attack_batch": (at_least(1),),
        "mix": (between(0, 1, open_lo=True),),
    }


@dataclass(frozen=True)
class Recipe:
    """Everything a command needs besides file paths. Add a method's section as one more field here."""

    base: str = field(
        default="tiny",
        metadata={"help": "Base model: a registry id ('tiny', 'sd-1.4'), a local diffusers folder, or a hub id."},
    )
    method: str = field(
        default="",
        metadata={"help": "Unlearning method name, e.g. 'siss'. Empty for commands that train nothing."},
    )
    concept: ConceptConfig = field(default_factory=ConceptConfig, metadata={"help": "What is erased (section)."})
    sample: SampleConfig = field(default_factory=SampleConfig, metadata={"help": "How images are sampled (section)."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "The LoRA adapters trained (section)."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "The optimisation loop (section)."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "How erasures are measured (section)."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training data sets (section)."})
    siss: SissConfig = field(default_factory=SissConfig, metadata={"help": "SISS settings (section)."})
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig,
                                     metadata={"help": "adaptive-siss settings (section)."})
    ppo: PpoConfig = field(default_factory=PpoConfig, metadata={"help": "ppo-alpha settings (section)."})
    esd: EsdConfig = field(default_factory=EsdConfig, metadata={"help": "esd settings (section)."})
    uce: UceConfig = field(default_factory=UceConfig, metadata={"help": "uce and rece settings (section)."})
    ac: AcConfig = field(default_factory=AcConfig, metadata={"help": "ac settings (section)."})
    sa: SaConfig = field(default_factory=SaConfig, metadata={"help": "sa settings (section)."})
    receler: RecelerConfig = field(default_factory=RecelerConfig, metadata={"help": "receler settings (section)."})
    mace: MaceConfig = field(default_factory=MaceConfig, metadata={"help": "mace settings (section)."})
    ant: AntConfig = field(default_factory=AntConfig, metadata={"help": "ant settings (section)."})
    sld: SldConfig = field(default_factory=SldConfig, metadata={"help": "sld settings (section)."})
    safree: SafreeConfig = field(default_factory=SafreeConfig, metadata={"help": "safree settings (section)."})
    critic: CriticRlConfig = field(default_factory=CriticRlConfig,
                                 metadata={"help": "critic-rl and train-critic settings (section)."})
    attack: AttackConfig = field(default_factory=AttackConfig,
                                 metadata={"help": "Attacks on an erasure (section)."})
    robust: RobustConfig = field(default_factory=RobustConfig,
                                 metadata={"help": "Robust erasure: adversarial training (section)."})
    defaults: str = field(
        default="auto",
        metadata={"help": "Where the values no recipe file, option or --set gives come from: 'auto' (with no "
                  "--recipe on the tiny base, the shipped tiny preset of the method; otherwise the method's "
                  "paper settings), 'paper', or a preset name from `erase unlearn --help` (e.g. "
                  "'tiny-digit-esd'). The recipe written beside a delta names the one used."},
    )

    CHECKS: ClassVar[Checks] = {
        "base": (NOT_BLANK,),
        "method": (Check(lambda v: v in ("", *METHOD_NAMES), "one of " + ", ".join(METHOD_NAMES)),),
        "defaults": (NOT_BLANK,),
    }
