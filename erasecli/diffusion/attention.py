"""Cross-attention maps: what receler's mask and mace's loss read (docs/methods.md, "receler", "mace").

`recording(denoiser)` swaps in, for every cross-attention module (the `attn2` of SD and SDXL transformer blocks;
on a Flux transformer the joint attention of each double-stream block, where the text tokens have keys of their
own), an attention processor that computes attention in the explicit softmax form and keeps the probabilities;
the original processors come back on exit. Processors are diffusers' public way to change attention
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


class JointRecordingProcessor:
    """A Flux double-stream block's joint attention as diffusers' `FluxAttnProcessor` computes it (the image and
    text streams' projections, the q / k RMS norms, the text tokens first, RoPE over both, the two output
    projections), in the explicit softmax form, keeping in `maps[name]` what the image tokens give the text
    tokens: (B, heads, Q_image, L_text), a slice of rows that sum to 1 over text and image keys together.
    Differs from the default processor only by float rounding."""

    def __init__(self, maps: dict, name: str):
        self.maps, self.name = maps, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        from diffusers.models.embeddings import apply_rotary_emb

        def heads(x):
            return x.unflatten(-1, (-1, attn.head_dim))  # (B, S, heads, d)

        L = encoder_hidden_states.shape[1]
        q = torch.cat([attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states))),
                       attn.norm_q(heads(attn.to_q(hidden_states)))], dim=1)
        k = torch.cat([attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states))),
                       attn.norm_k(heads(attn.to_k(hidden_states)))], dim=1)
        v = torch.cat([heads(attn.add_v_proj(encoder_hidden_states)), heads(attn.to_v(hidden_states))], dim=1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, S, d)
        scores = q @ k.transpose(-1, -2) * attn.head_dim ** -0.5
        if attention_mask is not None:
            scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                      else scores + attention_mask)
        probs = scores.softmax(-1)
        self.maps[self.name] = probs[:, :, L:, :L]
        out = (probs @ v).transpose(1, 2).flatten(2, 3).to(q.dtype)  # (B, S, inner)
        text, image = out[:, :L], out[:, L:]
        return attn.to_out[1](attn.to_out[0](image.contiguous())), attn.to_add_out(text.contiguous())


def cross_attentions(denoiser) -> dict:
    """{module name: attention module} of the attentions `recording` records: a UNet's `attn2`, a Flux
    transformer's joint attentions with a text stream (the double-stream blocks; the single-stream blocks'
    sequence is one stream, with no projection that reads the text alone)."""
    from erasecli.diffusion.kinds import kind_of

    if kind_of(denoiser).flow:
        return {n: m for n, m in denoiser.named_modules()
                if n.endswith(".attn") and getattr(m, "added_kv_proj_dim", None) is not None}
    return {n: m for n, m in denoiser.named_modules() if is_cross(n) and hasattr(m, "processor")}


@contextmanager
def recording(unet):
    """While inside, every cross-attention of `unet` (a UNet or a Flux transformer: `cross_attentions`) keeps its
    last probabilities: yields {module name: (B, heads, Q, K)}, the module names as `named_modules` gives them
    ('...attn2'; on Flux '...attn', K the text tokens)."""
    from erasecli.diffusion.kinds import kind_of

    old = dict(unet.attn_processors)
    maps: dict = {}
    cls = JointRecordingProcessor if kind_of(unet).flow else RecordingProcessor
    cross = cross_attentions(unet)
    new = {n: cls(maps, n[: -len(".processor")]) if n[: -len(".processor")] in cross else p for n, p in old.items()}
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
