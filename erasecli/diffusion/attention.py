"""Cross-attention maps: what receler's mask and mace's loss read (docs/methods.md, "receler", "mace").

`recording(unet)` swaps in, for every cross-attention module (the `attn2` of SD and SDXL transformer blocks), an
attention processor that computes attention in the explicit softmax form and keeps the probabilities; the
original processors come back on exit. Processors are diffusers' public way to change attention
(`set_attn_processor`): nothing in diffusers is patched.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def is_cross(name: str) -> bool:
    """Whether an attention processor's (or module's) name is a cross-attention of the UNet."""
    return ".attn2" in f".{name}"


class RecordingProcessor:
    """Attention as diffusers' `AttnProcessor` computes it (q, k, v projections, `get_attention_scores`, the output
    projection, the same norms, residual and rescale), and the probabilities of the last call kept in
    `maps[name]`, (B, heads, Q, K). Differs from the default SDPA processor only by float rounding."""

    def __init__(self, maps: dict, name: str):
        self.maps, self.name = maps, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:  # (B, C, H, W) -> (B, HW, C)
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        B, Q, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], B)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B * heads, Q, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B * heads, K, d)
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, Q, K)
        self.maps[self.name] = probs.view(B, attn.heads, Q, -1)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, Q, inner)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def recording(unet):
    """While inside, every cross-attention of `unet` keeps its last probabilities: yields {module name:
    (B, heads, Q, K)}, the module names as `named_modules` gives them ('...attn2')."""
    old = dict(unet.attn_processors)
    maps: dict = {}
    new = {n: RecordingProcessor(maps, n[: -len(".processor")]) if is_cross(n) else p for n, p in old.items()}
    unet.set_attn_processor(new)
    try:
        yield maps
    finally:
        unet.set_attn_processor(old)


def token_maps(probs, tokens):
    """(B, Q) attention each query gives the tokens marked in `tokens` (B, K) bool, averaged over heads."""
    return (probs.mean(1) * tokens[:, None, :].to(probs.dtype)).sum(-1)


def side(Q: int) -> int:
    """The side of a square map of Q queries (SD and SDXL latents are square here)."""
    s = int(round(Q ** 0.5))
    if s * s != Q:
        raise ValueError(f"{Q} queries are not a square map")
    return s
