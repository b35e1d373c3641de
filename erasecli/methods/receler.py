"""receler: Reliable Concept Erasing of Text-to-Image Diffusion Models via Lightweight Erasers (Huang et al.,
ECCV 2024, arXiv 2311.17717). docs/methods.md, "receler".

A lightweight eraser sits after every cross-attention and is trained with ESD's objective; a concept-localized
regularizer keeps the eraser's output at zero outside the image regions that the concept's words attend to, so
what the concept does not touch stays; adversarial prompts found against the eraser (`robust.enabled`, soft
prefix tokens) make it hold under attack. Code names and symbols:

    E_l           the eraser of cross-attention l: a LoRA on attn2.to_out.0, i.e. a linear rank-r map of the
                  attention's output added to it [adapted: the paper's eraser is up(GELU(down(h))) on the
                  block's output; without the GELU it is an exact LoRA a plain diffusers pipeline loads]
    x_t, t        as esd's (receler.xt_source: sample, the paper's; data [ours])
    e_c, e_0      eps_theta*(x_t, c, t), eps_theta*(x_t, "", t) of the frozen base, c the forget prompt as
                  written (the plain prompt even where robust training conditions the model on an adversarial one)
    target        e_anchor - eta (e_c - e_ref) (esd's, with its anchor / guide_from options; the paper's is
                  e_0 - eta (e_c - e_0))
    A_l           the frozen base's cross-attention probabilities of layer l under c, averaged over heads and
                  summed over the concept's tokens: (B, Q); divided by its maximum per image
    M_l           A_l > receler.mask_threshold: where the concept is drawn
    L_erase       ||eps_theta(x_t, c', t) - target||^2, c' = c or its adversarial version
    L_reg         mean_l  sum_{b,q} (1 - M_l) mean_d E_l(h)^2 / sum (1 - M_l): the eraser's output outside the mask
    loss          L_erase + receler.reg_weight L_reg (+ receler.retain_weight L_r [ours])
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

import torch

from erasecli.diffusion.attention import recording, token_maps
from erasecli.methods.esd import Esd
from erasecli.methods.losses import mse
from erasecli.methods.sa import lora_layers

ERASER = ("attn2.to_out.0",)  # where the eraser sits: the output projection of every cross-attention


def concept_tokens(tokenizer, prompts, concept, fillers=("cat", "dog"), length: int | None = None) -> torch.Tensor:
    """(P, L) bool: which token positions of each prompt (padded as the UNet sees it: to `length`, else the
    tokenizer's model_max_length) are the concept's words.
    The concept's words are replaced by a one-token filler; the positions before the first and after the last
    token that changes are the prompt's own, the rest the concept's. Two fillers, so a filler that is itself part
    of the concept changes nothing. A prompt without the concept's words marks nothing."""
    from erasecli.attacks.inversion import inverted_prompt

    L = int(length or tokenizer.model_max_length)
    out = torch.zeros(len(prompts), L, dtype=torch.bool)
    for j, p in enumerate(prompts):
        ids = tokenizer(p, truncation=True, max_length=L).input_ids
        for f in fillers:
            other = tokenizer(inverted_prompt(p, concept, f), truncation=True, max_length=L).input_ids
            if other == ids:
                continue
            a = 0
            while a < min(len(ids), len(other)) and ids[a] == other[a]:
                a += 1
            b = 0
            while b < min(len(ids), len(other)) - a and ids[-1 - b] == other[-1 - b]:
                b += 1
            out[j, a : len(ids) - b] = True
    return out


def states_tokens(pipe, prompts, concept) -> torch.Tensor:
    """`concept_tokens` in the tokenisation of the token states the denoiser attends to (CLIP's on SD and SDXL,
    T5's on Flux, padded to the pipeline's length)."""
    from erasecli.diffusion.cond import token_length
    from erasecli.diffusion.kinds import kind_of

    tk = getattr(pipe, kind_of(pipe).states_tokenizer)
    return concept_tokens(tk, prompts, concept, length=token_length(pipe, tk))


def eraser_layers(unet) -> list:
    """(attention module name, LoRA layer) of every eraser: the LoRA layers on a cross-attention's output (on
    Flux, a double block's joint attention's image output: `attention.cross_attentions`)."""
    from erasecli.diffusion.attention import cross_attentions

    cross = cross_attentions(unet)
    return [(n[: -len(".to_out.0")], m) for n, m in lora_layers(unet)
            if n.endswith(".to_out.0") and n[: -len(".to_out.0")] in cross]


@contextmanager
def eraser_outputs(unet):
    """While inside, each eraser's last output E_l(h) (its LoRA branch, scaled) is kept: yields {attention
    module name: (B, Q, D)}."""
    outs: dict = {}
    hooks = []
    for name, layer in eraser_layers(unet):
        key = next(iter(layer.lora_A))

        def keep(module, args, out, name=name, scale=layer.scaling[key]):
            outs[name] = out * scale

        hooks.append(layer.lora_B[key].register_forward_hook(keep))
    try:
        yield outs
    finally:
        for h in hooks:
            h.remove()


def concept_masks(maps: dict, tokens, threshold: float) -> dict:
    """{layer: (B, Q) float}: M_l, 1 where the concept's tokens get more than `threshold` of the layer's largest
    attention to them in the image, from probabilities `maps` (B, heads, Q, K) and `tokens` (B, K) bool."""
    out = {}
    for name, probs in maps.items():
        a = token_maps(probs.float(), tokens.to(probs.device))  # (B, Q)
        a = a / a.amax(dim=1, keepdim=True).clamp_min(1e-12)
        out[name] = (a > threshold).float()
    return out


def localized_penalty(outs: dict, masks: dict, rows: int):
    """L_reg: the mean over layers of the erasers' squared output outside each mask, per unmasked query, on the
    first `rows` rows of each output (the forget rows of a forward that may carry retain rows after them)."""
    terms = []
    for name, E in outs.items():
        if name not in masks:
            continue
        off = 1.0 - masks[name]  # (B, Q)
        terms.append(((E[:rows].float() ** 2).mean(-1) * off).sum() / (off.sum() + 1e-9))
    if not terms:
        raise RuntimeError("receler found no eraser with a cross-attention map to regularise")
    return torch.stack(terms).mean()


class Receler(Esd):
    name = "receler"
    kinds = ("sd", "sdxl", "flux")  # Flux: the eraser on the joint attention's image output (docs/methods.md)
    adapter_targets: ClassVar[tuple] = ERASER

    @property
    def cfg(self):
        return self.ctx.recipe.receler

    @classmethod
    def check(cls, recipe) -> None:
        if recipe.receler.guide_from == "anchor" and recipe.receler.anchor != "prompt":
            from erasecli.errors import RecipeError

            raise RecipeError("receler.guide_from 'anchor' measures from each forget prompt's anchor, which "
                              "receler.anchor 'empty' does not have", hint="add --set receler.anchor=prompt")

    def __init__(self, ctx):
        super().__init__(ctx)
        d = ctx.data
        self.plain_c = d.forget_c.clone()  # each forget image's own prompt, before robust training mixes any in
        self.tokens = states_tokens(ctx.base.pipe, d.prompts, d.sets).to(ctx.device)  # (P, L)
        if not self.tokens[self.plain_c].any():
            from erasecli.errors import RecipeError

            raise RecipeError(f"no forget prompt names the concept {d.sets.name!r} in words receler can find, so "
                              "it has no attention mask", hint="use forget prompts that contain the concept's name")

    def step(self, k: int) -> dict:
        ctx, cfg, B = self.ctx, self.cfg, self.ctx.recipe.train.batch_size
        i, c, c_anchor, x_t, t = self.draw()
        c_plain = ctx.world.local(self.plain_c[i])
        with recording(ctx.unet) as maps:  # the base's maps under the plain forget prompt (first len(c) rows)
            target = self.frozen_target(x_t, t, c_plain, c_anchor)
            maps = {n: p[: len(c)] for n, p in maps.items()}
        masks = concept_masks(maps, self.tokens[c_plain], cfg.mask_threshold)
        with eraser_outputs(ctx.unet) as outs:
            e, L_r = self.eps_and_retain(x_t, t, c, cfg.retain_weight)
            L_reg = localized_penalty(outs, masks, len(c))
        L_erase = mse(e, target).sum() / B  # this process's share of the batch mean
        L_reg = L_reg * len(c) / B  # likewise, so the processes' sum is the whole batch's
        loss = L_erase + cfg.reg_weight * L_reg + cfg.retain_weight * L_r
        row = self.update(loss, {"L_erase": L_erase, "L_reg": L_reg, "L_r": L_r})
        return {**row, "mask_share": float(sum(m.mean() for m in masks.values()) / max(len(masks), 1)),
                "t": float(t.float().mean().item())}

