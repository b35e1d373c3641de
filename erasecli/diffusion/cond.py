"""How a base's UNet is conditioned on text, Stable Diffusion and SDXL alike: the one place that knows.

SD's UNet takes the text encoder's token states c (B, L, D). SDXL's takes the two encoders' penultimate states
side by side (B, L, D1 + D2), plus `added_cond_kwargs`: the second encoder's pooled projection (B, Dp) and six
time ids (original size, crop top-left, target size). So that every caller can keep one tensor per condition
(index it, concatenate it, cache it, write adversarial rows into it), an SDXL condition travels as
(B, L + 1, D): the token states, then one extra row holding [pooled (Dp), time ids (6), zeros]. `unet_eps`
unpacks it where the UNet is called; `token_states` drops the extra row for what reads the states alone
(uce / rece's cross-attention edit). Dp + 6 <= D holds for SDXL (1280 + 6 <= 2048) and tiny-xl (64 + 6 <= 128).

The empty prompt of an SDXL base whose config says `force_zeros_for_empty_prompt` (stabilityai's does) is
all zeros, as StableDiffusionXLPipeline makes its unconditional input; tiny-xl was trained with the encoded
empty prompt as its unconditional input and says so in its config.
"""

from __future__ import annotations

import torch

from erasecli.diffusion.kinds import denoiser_config, kind_of

TIME_IDS = 6


def added_conditioning(unet) -> bool:
    """The denoiser takes a pooled text embedding and time ids besides the token states (its kind says)."""
    return kind_of(unet).added_conditioning


def pooled_dim(unet) -> int:
    cfg = denoiser_config(unet)
    return cfg["projection_class_embeddings_input_dim"] - TIME_IDS * cfg["addition_time_embed_dim"]


def time_ids(pipe) -> torch.Tensor:
    """(6,) SDXL's micro-conditioning for the base's own resolution: (H, W, 0, 0, H, W), no crop."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return torch.tensor([side, side, 0, 0, side, side], dtype=torch.float32)


def pack(states, pooled, ids) -> torch.Tensor:
    """(B, L, D) token states + (B, Dp) pooled + (6,) time ids -> (B, L + 1, D)."""
    B, _, D = states.shape
    extra = torch.zeros(B, 1, D, dtype=states.dtype, device=states.device)
    dp = pooled.shape[-1]
    if dp + TIME_IDS > D:
        raise ValueError(f"pooled width {dp} + {TIME_IDS} time ids exceed the token width {D}")
    extra[:, 0, :dp] = pooled.to(states.dtype)
    extra[:, 0, dp : dp + TIME_IDS] = ids.to(states.device, states.dtype)
    return torch.cat([states, extra], dim=1)


def unpack(unet, c) -> tuple:
    """(states, added_cond_kwargs or None) of a condition tensor from `encode_prompts`."""
    if not added_conditioning(unet):
        return c, None
    dp = pooled_dim(unet)
    extra = c[:, -1]  # (B, D)
    return c[:, :-1], {"text_embeds": extra[:, :dp], "time_ids": extra[:, dp : dp + TIME_IDS]}


def token_states(unet, c):
    """The token states alone (B, L, D): what the cross-attention keys and values read."""
    return c[:, :-1] if added_conditioning(unet) else c


def unet_eps(unet, x, t, c):
    """eps_theta(x, t, c): the UNet's prediction under a condition tensor from `encode_prompts`."""
    states, added = unpack(unet, c)
    if added is None:
        return unet(x, t, encoder_hidden_states=states).sample
    return unet(x, t, encoder_hidden_states=states, added_cond_kwargs=added).sample


def encode_prompts(pipe, prompts, device, batch: int = 64) -> torch.Tensor:
    """Condition tensors of prompts, as the pipeline itself encodes them: (P, L, D) for SD, (P, L + 1, D) for
    SDXL. Gradients flow where the caller enables them (a trained text-encoder adapter)."""
    prompts = list(prompts)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        if not added_conditioning(pipe.unet):
            out.append(pipe.encode_prompt(chunk, device, 1, False)[0])
            continue
        states, _, pooled, _ = pipe.encode_prompt(prompt=chunk, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        if pipe.config.get("force_zeros_for_empty_prompt", False):  # zero states and pooled; the time ids stay
            keep = torch.tensor([p != "" for p in chunk], device=states.device)
            states, pooled = states * keep[:, None, None], pooled * keep[:, None]
        out.append(pack(states, pooled, time_ids(pipe)))
    return torch.cat(out)


def text_encoders(pipe) -> list:
    """The encoders whose input embeddings a soft-token attack overrides: [te] for SD, [te1, te2] for SDXL."""
    return [getattr(pipe, a) for a in kind_of(pipe).text_encoders]


def tokenizers(pipe) -> list:
    return [getattr(pipe, a) for a in kind_of(pipe).tokenizers]


def pooled_ids(pipe, ids) -> torch.Tensor:
    """The pooled (end-of-text) embedding of token ids (B, L): SD's text-encoder pooler output, SDXL's second
    encoder's projection (what the UNet receives). Input-embedding hooks apply, as in `encode_ids`.  (B, Dp)"""
    if not added_conditioning(pipe.unet):
        return pipe.text_encoder(ids).pooler_output
    return encode_ids(pipe, ids)[:, -1, : pooled_dim(pipe.unet)]


def encode_ids(pipe, ids) -> torch.Tensor:
    """The condition tensor of token ids (B, L) through the base's encoders, as `encode_prompts` makes it from
    text (forward hooks on the encoders' input embeddings, as the attacks set, apply). On SDXL both encoders
    read the first tokenizer's ids: the same words and positions, though stabilityai's second tokenizer pads
    with another token, so the padded positions' states differ slightly from the pipeline's."""
    if not added_conditioning(pipe.unet):
        return pipe.text_encoder(ids)[0]
    h1 = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    out2 = pipe.text_encoder_2(ids, output_hidden_states=True)
    states = torch.cat([h1, out2.hidden_states[-2]], dim=-1)  # (B, L, D1 + D2)
    return pack(states, out2.text_embeds, time_ids(pipe))
