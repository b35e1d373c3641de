"""Typed recipes: frozen, nested dataclasses read from YAML, with `--set key.sub=value` overrides.

Precedence, later wins: dataclass defaults < YAML file < command-line options < `--set` overrides.

Every problem (missing or malformed file, unknown key at any depth, wrong type, value out of range)
raises `RecipeError` with a one-line message naming the file or `--set`, the dotted key and the value,
and a hint (the nearest valid key, or the field's help text).

The loader walks `dataclasses.fields` and type hints, so a new section (say `siss: SissConfig`) needs
only its frozen dataclass, help text on each field, an optional `CHECKS` table, and a field on `Recipe`.
Supported field types: str, int, float, bool, tuple[T, ...], T | None and nested dataclasses.

Deliberate leniencies, each for a common slip: an int is accepted for a float field (stored as float);
a numeric string such as "1e-4" is accepted for a float field, because YAML 1.1 reads `lr: 1e-4`
(no dot) as a string; a single string is accepted for a list-of-strings field; a section left empty
(`sample:` with every key commented out) counts as an empty mapping; in `--set`, a str field takes
the raw text, so `--set concept.name=3` means the text "3", and `key=` sets an empty string or list.
Duplicate keys in a YAML file are an error (plain YAML silently keeps the last one).

Nothing here imports torch: loading a recipe must be instant and happen before any model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import os
import secrets
import string
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import yaml

from erasecli.errors import RecipeError

__all__ = [
    "METHOD_NAMES",
    "REWARD_NAMES",
    "LR_SCHEDULES",
    "SCHEDULERS",
    "Check",
    "ConceptConfig",
    "LoraConfig",
    "Recipe",
    "SampleConfig",
    "EvalConfig",
    "TrainConfig",
    "field_help",
    "load_recipe",
    "recipe_from_dict",
    "recipe_hash",
    "recipe_keys",
    "recipe_to_dict",
    "recipe_to_yaml",
    "validate",
    "write_recipe",
]

SCHEDULERS = ("ddim", "ddpm")
LR_SCHEDULES = ("constant", "linear", "cosine")


# ---------------------------------------------------------------------------------------------------
# Value checks. Each section lists its own in a `CHECKS` class attribute: {field name: (Check, ...)},
# so a new section brings its checks with it. A failed check reads "<key> must be <need>, got <value>".


@dataclass(frozen=True)
class Check:
    """One rule on a field's value: `ok(value)` must hold; `need` completes "<key> must be ..."."""

    ok: Callable[[Any], bool]
    need: str
    each: bool = False  # apply to every element of a tuple field, naming `key[i]`


Checks = Mapping[str, tuple[Check, ...]]


def at_least(n: float) -> Check:
    return Check(lambda v: v >= n, f">= {n}")


def at_most(n: float) -> Check:
    return Check(lambda v: v <= n, f"<= {n}")


def above(n: float) -> Check:
    return Check(lambda v: v > n, f"> {n}")


def between(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    """lo <= v <= hi; an open end excludes its bound ("in (0, 1]")."""
    return Check(lambda v: (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi),
                 f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}")


def one_of(*names: str) -> Check:
    return Check(lambda v: v in names, "one of " + ", ".join(repr(n) for n in names))


NOT_BLANK = Check(lambda v: bool(v.strip()), "non-empty")
NON_EMPTY = Check(lambda v: len(v) > 0, "a non-empty list")


def template_of(name: str) -> Check:
    """Each string must contain `{name}` and no other `{...}` field, so `.format(name=...)` cannot fail."""

    def ok(text: str) -> bool:
        try:
            fields_ = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError:  # an unmatched '{' or '}'
            return False
        return fields_ == {name}

    return Check(ok, f"a template containing '{{{name}}}' and no other '{{...}}'", each=True)


# ---------------------------------------------------------------------------------------------------
# The recipe. Help text lives in each field's metadata; `field_help()` appends the default.


@dataclass(frozen=True)
class ConceptConfig:
    """What is erased, how prompts name it, and what must stay unchanged."""

    name: str = field(
        default="",
        metadata={"help": "The concept as users say it, e.g. 'van gogh', 'digit 3', 'red'. Empty: none."},
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

    CHECKS: ClassVar[Checks] = {
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


METHOD_NAMES = ("siss", "adaptive-siss", "ppo-alpha", "esd", "critic-rl")
REWARD_NAMES = ("clip", "classifier")  # erasecli.rewards.REWARDS has the factories  # erasecli.methods.METHODS has the classes
LORA_PRESETS = ("attn", "xattn", "noxattn")  # target_modules words that expand to module lists (ESD subsets)


@dataclass(frozen=True)
class DataConfig:
    """The forget / anchor / retain sets every method trains on (METHODS.md, "Shared pieces")."""

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
    """SISS, shared by siss, adaptive-siss and ppo-alpha (METHODS.md)."""

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

    CHECKS: ClassVar[Checks] = {
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
    xt_source: str = field(default="sample", metadata={"help": "'sample' (x_t by partial DDIM sampling with the "
                                                       "model being trained, as ESD) or 'data' (forget latents noised "
                                                       "to t, cheaper) [ours]."})
    start_guidance: float = field(default=3.0, metadata={"help": "Guidance of the partial sampling, >= 0."})
    retain_weight: float = field(default=0.0, metadata={"help": "Weight of a retain-preservation term, >= 0 "
                                                        "(0 is the original ESD) [ours]."})

    CHECKS: ClassVar[Checks] = {
        "negative_guidance": (at_least(0),),
        "anchor": (one_of("empty", "prompt"),),
        "xt_source": (one_of("sample", "data"),),
        "start_guidance": (at_least(0),),
        "retain_weight": (at_least(0),),
    }


@dataclass(frozen=True)
class CriticRlConfig:
    """critic-rl and `erase train-critic`: rollouts, rewards, the critic V_phi(x_t, t, c), PPO (METHODS.md)."""

    path: str = field(default="", metadata={"help": "A critic folder from `erase train-critic` to reuse (--critic). "
                                            "Empty: critic-rl trains one first."})
    reward: str = field(default="clip", metadata={"help": "Reward: 'clip' (CLIP similarity; the tiny CLIP on the "
                                                  "tiny base) or 'classifier' (tiny base only; the evaluation judge)."})
    clip_model: str = field(default="openai/clip-vit-large-patch14",
                            metadata={"help": "CLIP for the clip reward on non-tiny bases: hub id or folder."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain prompts' utility reward, >= 0 [ours]."})
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
    kl_weight: float = field(default=0.0, metadata={"help": "Weight of the per-step KL to the base kernel, >= 0."})
    retain_loss: float = field(default=0.0, metadata={"help": "Weight of a denoising loss on the base's retain "
                                                      "images added to each PPO update (0: off; > 0 samples "
                                                      "data.* like siss) [ours]."})
    kl_prompts: str = field(default="all", metadata={"help": "Rollouts the KL applies to: 'all', or 'retain' (only "
                                                     "retain prompts' chains stay near the base's) [ours]."})
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
        "timestep_fraction": (between(0, 1, open_lo=True),),
        "kl_weight": (at_least(0),),
        "kl_prompts": (one_of("all", "retain"),),
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
    """How `erase evaluate` measures an erasure (UnlearnCanvas definitions; see METHODS.md)."""

    metrics: tuple[str, ...] = field(
        default=("ua", "ira", "cra", "clip_score", "fid", "kid"),
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
    critic: CriticRlConfig = field(default_factory=CriticRlConfig,
                                 metadata={"help": "critic-rl and train-critic settings (section)."})

    CHECKS: ClassVar[Checks] = {
        "base": (NOT_BLANK,),
        "method": (Check(lambda v: v in ("", *METHOD_NAMES), "one of " + ", ".join(METHOD_NAMES)),),
    }


# ---------------------------------------------------------------------------------------------------
# Walking the dataclass tree.


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def recipe_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every settable dotted key, in declaration order, e.g. ['base', 'method', 'concept.name', ...]."""
    keys: list[str] = []
    for name in _fields(cls):
        tp = _hints(cls)[name]
        if _is_section(tp):
            keys += recipe_keys(tp, _join(prefix, name))
        else:
            keys.append(_join(prefix, name))
    return keys


def _in(source: str | None) -> str:
    return f" in {source}" if source else ""


def _show(value: Any) -> str:
    """A value as the user wrote it, on one short line."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)  # repr escapes newlines, so this stays on one line
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key(dotted: str, section: type, prefix: str, source: str | None) -> RecipeError:
    leaf = dotted.rsplit(".", 1)[-1]
    names = list(_fields(section))
    candidates = [_join(prefix, n) for n in difflib.get_close_matches(leaf, names, n=2)]
    if not candidates:  # right name, wrong section? e.g. top-level 'steps' -> 'sample.steps'
        candidates = [k for k in recipe_keys() if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], n=1)][:3]
    if candidates:
        hint = "did you mean " + " or ".join(f"'{c}'" for c in candidates) + "?"
    else:
        hint = f"valid keys{' in ' + repr(prefix) if prefix else ''}: " + ", ".join(names)
    return RecipeError(f"unknown recipe key '{dotted}'{_in(source)}", hint=hint)


def _resolve(dotted: str, source: str | None = None) -> tuple[dataclasses.Field, Any]:
    """The field and type hint behind a dotted key; unknown keys raise naming the nearest valid one."""
    cls: Any = Recipe
    prefix = ""
    for part in dotted.split("."):
        if not _is_section(cls):
            raise RecipeError(
                f"recipe key '{prefix}' is a value, not a section, so '{dotted}' does not exist{_in(source)}",
                hint=f"set '{prefix}' itself",
            )
        if part not in _fields(cls):
            raise _unknown_key(_join(prefix, part), cls, prefix, source)
        found, cls = _fields(cls)[part], _hints(cls)[part]
        prefix = _join(prefix, part)
    return found, cls


def field_help(dotted: str) -> str:
    """Help text for a dotted key such as 'sample.steps', ending with its default for value fields."""
    found, tp = _resolve(dotted)
    text = found.metadata.get("help", "")
    if _is_section(tp):
        return text
    return f"{text} Default: {json.dumps(_plain(found.default), ensure_ascii=False)}."


# ---------------------------------------------------------------------------------------------------
# Types: raw YAML/CLI values -> typed values, one layer at a time so errors can name their source.

_NOUNS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def _describe(tp: Any) -> str:
    if tp in _NOUNS:
        return _NOUNS[tp]
    if _is_section(tp):
        return "a mapping of keys to values"
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_PLURALS.get(args[0], 'values')}"
    return str(tp)


def _type_error(value: Any, tp: Any, key: str, source: str | None) -> RecipeError:
    if value is None:
        hint = "give a value, or delete the key to use the default"
    elif tp is str and isinstance(value, (int, float)):
        hint = f'quote it to make it text: "{value}"'
    elif tp is int and isinstance(value, float):
        hint = "use a whole number"
    else:
        hint = field_help(key.split("[", 1)[0])
    return RecipeError(f"recipe key '{key}'{_in(source)} expects {_describe(tp)}, got {_show(value)}", hint=hint)


def _coerce_section(value: Any, cls: type, prefix: str, source: str | None) -> dict[str, Any]:
    """Check keys and types of one (partial) section; returns a nested dict of typed values."""
    if value is None and prefix:  # `sample:` with every key commented out
        return {}
    if not isinstance(value, Mapping):
        what = f"recipe section '{prefix}'" if prefix else "the recipe"
        raise RecipeError(
            f"{what}{_in(source)} must be a mapping of keys to values, got {_show(value)}",
            hint="write one 'key: value' per line" + (f" under '{prefix}:'" if prefix else ""),
        )
    out: dict[str, Any] = {}
    for key, raw in value.items():
        name = str(key)
        if name not in _fields(cls):
            raise _unknown_key(_join(prefix, name), cls, prefix, source)
        out[name] = _coerce(raw, _hints(cls)[name], _join(prefix, name), source)
    return out


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_section(tp):
        return _coerce_section(value, tp, key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, tp, key, source)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):  # bool is an int in Python, not here
            return value
        raise _type_error(value, tp, key, source)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
            try:
                number = float(value.strip())
            except ValueError:
                raise _type_error(value, tp, key, source) from None
        else:
            raise _type_error(value, tp, key, source)
        if not math.isfinite(number):
            raise RecipeError(f"recipe key '{key}'{_in(source)} must be a finite number, got {_show(value)}",
                              hint=field_help(key))
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(value, tp, key, source)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, str) and args[0] is str:  # a single prompt or module name
            value = [value]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value))
        raise _type_error(value, tp, key, source)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _coerce(value, rest[0], key, source)
    raise TypeError(f"recipe field '{key}' has type {tp!r}, which the recipe loader does not support")


# ---------------------------------------------------------------------------------------------------
# Layers: YAML file, command-line options, --set overrides.


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently resolves to the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides are intended
                continue
            key = self.construct_object(key_node, deep=deep)
            with contextlib.suppress(TypeError):  # unhashable keys: let SafeLoader report them
                if key in seen:
                    raise _DuplicateKey(
                        None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or "invalid YAML"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}",
                          hint="check the path, or see recipes/ for examples") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe path is a folder, not a file: {path}", hint="give a .yaml file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe file is not UTF-8 text: {path}", hint="save it as UTF-8 YAML") from None
    except OSError as err:
        raise RecipeError(f"cannot read recipe file {path}: {err.strerror or err}",
                          hint="check its permissions") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise RecipeError(f"malformed YAML in recipe file {path}, {_yaml_problem(err)}",
                          hint="keep one of the two; YAML would silently use the last") from None
    except yaml.YAMLError as err:
        raise RecipeError(
            f"malformed YAML in recipe file {path}, {_yaml_problem(err)}",
            hint="check indentation, the ':' after each key, and unclosed quotes or brackets on that line",
        ) from None
    return {} if data is None else data


def _parse_set(text: str) -> dict[str, Any]:
    """`--set a.b=value` -> {'a': {'b': value}}; the value is YAML, except str fields take the raw text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise RecipeError(f"cannot read --set {text!r}: expected the form --set key.sub=value",
                          hint="e.g. --set sample.steps=50 or --set lora.target_modules=[to_q,to_v]")
    key = ".".join(part.strip() for part in key.split("."))
    source = f"--set {text}"
    _, tp = _resolve(key, source)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise RecipeError(f"cannot parse the value in {source}: {_yaml_problem(err)}",
                          hint="quote the value, e.g. --set 'concept.name=\"a: b\"'") from None
    wants_text = tp is str or tp == tuple[str, ...]
    if wants_text and not isinstance(value, (str, list, dict)):  # `name=3`, `name=yes`, `name=`
        value = raw.strip()
        if tp != str and value == "":
            value = []  # `--set concept.retain_prompts=` clears the list
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """CLI options left unset arrive as None; they must not override the file."""
    return {
        k: _drop_none(v) if isinstance(v, Mapping) else v
        for k, v in values.items()
        if v is not None
    }


def _merge(into: dict, layer: Mapping, origins: dict[str, str], source: str, prefix: str = "") -> None:
    for key, value in layer.items():
        dotted = _join(prefix, key)
        if isinstance(value, dict):  # a section; typed leaves are never dicts
            _merge(into.setdefault(key, {}), value, origins, source, dotted)
        else:
            into[key] = value
            origins[dotted] = source


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = _hints(cls)
    return cls(**{k: _build(hints[k], v) if _is_section(hints[k]) else v for k, v in values.items()})


# ---------------------------------------------------------------------------------------------------
# Validation of values (types are checked while coercing).


def _failures(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any, Check]]:
    checks: Checks = getattr(type(obj), "CHECKS", {})
    for name in _fields(type(obj)):
        value, key = getattr(obj, name), _join(prefix, name)
        if dataclasses.is_dataclass(value):
            yield from _failures(value, key)
            continue
        for check in checks.get(name, ()):
            items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if check.each else [(key, value)]
            for item_key, item in items:
                if not check.ok(item):
                    yield item_key, item, check


def _validate(r: Recipe, origins: Mapping[str, str]) -> None:
    _coerce_section(recipe_to_dict(r), Recipe, "", None)  # types, for recipes built in Python
    for key, value, check in _failures(r):
        source = origins.get(key.split("[", 1)[0])
        raise RecipeError(
            f"{key} must be {check.need}, got {_show(value)}" + (f" (from {source})" if source else ""),
            hint=field_help(key.split("[", 1)[0]),
        )


def validate(r: Recipe) -> None:
    """Raise RecipeError for the first wrong type or out-of-range value, naming key and value."""
    _validate(r, {})


# ---------------------------------------------------------------------------------------------------
# Public entry points.


def recipe_from_dict(d: Mapping) -> Recipe:
    """A validated Recipe from a nested mapping (missing keys take their defaults)."""
    r = _build(Recipe, _coerce_section(d, Recipe, "", None))
    _validate(r, {})
    return r


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = (), **cli_values: Any) -> Recipe:
    """Defaults < YAML file at `path` < `cli_values` (top-level keys or nested dicts; None ignored)
    < `overrides` ("a.b=value" strings from --set, applied in order)."""
    if isinstance(overrides, str):
        overrides = (overrides,)
    layers: list[tuple[Any, str]] = []
    if path is not None:
        layers.append((_read_yaml(Path(path)), f"recipe file {path}"))
    cli = _drop_none(cli_values)
    if cli:
        layers.append((cli, "command-line options"))
    layers += [(_parse_set(text), f"--set {text}") for text in overrides]
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for data, source in layers:
        _merge(merged, _coerce_section(data, Recipe, "", source), origins, source)
    r = _build(Recipe, merged)
    _validate(r, origins)
    return r


def _plain(value: Any, tp: Any = None) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = _hints(type(value))
        return {name: _plain(getattr(value, name), hints[name]) for name in _fields(type(value))}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # so Recipe(guidance=5) and Recipe(guidance=5.0), equal, hash the same
    return value


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    """Nested dict of plain YAML/JSON types (tuples become lists), in declaration order."""
    return _plain(r)


def recipe_to_yaml(r: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(r), sort_keys=False, allow_unicode=True, default_flow_style=False)


def recipe_hash(r: Recipe) -> str:
    """First 12 hex digits of sha256 over the canonical JSON (sorted keys, no spaces, UTF-8).

    Every field counts, defaults included: adding a section with defaults changes every hash."""
    canonical = json.dumps(recipe_to_dict(r), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def write_recipe(r: Recipe, path: Path) -> None:
    """Write `r` as YAML atomically: a temp file in the same folder, then os.replace over `path`."""
    validate(r)
    path = Path(path)
    text = recipe_to_yaml(r)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise RecipeError(f"cannot write recipe to {path}: {err.strerror or err}",
                          hint="check that the folder exists and is writable") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
