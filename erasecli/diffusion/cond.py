"""How a base's UNet is conditioned on text, Stable Diffusion and SDXL alike: the one place that knows.

SD's UNet takes the text encoder's token states c (B, L, D). SDXL's takes the two encoders' penultimate states
side by side (B, L, D1 + D2), plus `added_cond_kwargs`: the second encoder's pooled projection (B, Dp) and six
time ids (original size, crop top-left, target size). So that every caller can keep one tensor per condition
(index it, concatenate it, cache it, write adversarial rows into it), an SDXL condition travels as
(B, L + 1, D): the token states, then one extra row holding [pooled (Dp), time ids (6), zeros]. `unet_eps`
unpacks it where the UNet is called; `token_states` drops the extra row for what reads the states alone
(uce / rece's cross-attention edit). Dp + 6 <= D holds for SDXL (1280 + 6 <= 2048) and tiny-xl (64 + 6 <= 128).

Flux's transformer takes the T5 encoder's token states (B, L, D), CLIP's pooled embedding (B, Dp) and, when it
is guidance-distilled (FLUX.1-dev), a guidance value; its latents are 2x2 patches in a sequence, with position
ids. A Flux condition travels as (B, L + 1, D) too: the T5 states, then [pooled (Dp), zeros] (768 <= 4096 for
FLUX.1, 64 <= 64 for tiny-flux); `unet_eps` packs the latent (B, C, H, W) into patches, calls the transformer at
`timestep = (t + 1) / T` (erasecli.diffusion.noise.flow_level) and unpacks its velocity back to (B, C, H, W).

The empty prompt of an SDXL base whose config says `force_zeros_for_empty_prompt` (stabilityai's does) is
all zeros, as StableDiffusionXLPipeline makes its unconditional input; tiny-xl was trained with the encoded
empty prompt as its unconditional input and says so in its config.
"""

from __future__ import annotations

import torch

from erasecli.diffusion.kinds import denoiser_config, kind_of

TIME_IDS = 6
FLUX_GUIDANCE = 3.5  # the guidance a guidance-distilled Flux (FLUX.1-dev) is told while it is trained or edited
MAX_T5 = 512  # FluxPipeline's default T5 length; a tokenizer with a shorter model_max_length (tiny-flux's 16) wins


def added_conditioning(unet) -> bool:
    """The denoiser takes a pooled text embedding and time ids besides the token states (its kind says)."""
    return kind_of(unet).added_conditioning


def pooled_dim(unet) -> int:
    cfg = denoiser_config(unet)
    if kind_of(cfg).flow:
        return cfg["pooled_projection_dim"]
    return cfg["projection_class_embeddings_input_dim"] - TIME_IDS * cfg["addition_time_embed_dim"]


def time_ids(pipe) -> torch.Tensor:
    """(6,) SDXL's micro-conditioning for the base's own resolution: (H, W, 0, 0, H, W), no crop."""
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return torch.tensor([side, side, 0, 0, side, side], dtype=torch.float32)


def pack(states, pooled, ids=None) -> torch.Tensor:
    """(B, L, D) token states + (B, Dp) pooled + (6,) time ids (SDXL; None for Flux) -> (B, L + 1, D)."""
    B, _, D = states.shape
    extra = torch.zeros(B, 1, D, dtype=states.dtype, device=states.device)
    dp, n_ids = pooled.shape[-1], (0 if ids is None else TIME_IDS)
    if dp + n_ids > D:
        raise ValueError(f"pooled width {dp} + {n_ids} time ids exceed the token width {D}")
    extra[:, 0, :dp] = pooled.to(states.dtype)
    if ids is not None:
        extra[:, 0, dp : dp + TIME_IDS] = ids.to(states.device, states.dtype)
    return torch.cat([states, extra], dim=1)


def unpack(unet, c) -> tuple:
    """(states, added_cond_kwargs or None) of a condition tensor from `encode_prompts`."""
    if not added_conditioning(unet):
        return c, None
    dp = pooled_dim(unet)
    extra = c[:, -1]  # (B, D)
    if kind_of(unet).flow:
        return c[:, :-1], {"pooled_projections": extra[:, :dp]}
    return c[:, :-1], {"text_embeds": extra[:, :dp], "time_ids": extra[:, dp : dp + TIME_IDS]}


def pooled_of(unet, c):
    """The pooled text embedding the denoiser receives (SDXL's text_embeds, Flux's pooled projection), (B, Dp)."""
    return c[:, -1, : pooled_dim(unet)]


def token_states(unet, c):
    """The token states alone (B, L, D): what the cross-attention keys and values read."""
    return c[:, :-1] if added_conditioning(unet) else c


def patchify(x) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C): FluxPipeline's packing."""
    B, C, H, W = x.shape
    return x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)


def unpatchify(p, H: int, W: int) -> torch.Tensor:
    B, _, C4 = p.shape
    return p.view(B, H // 2, W // 2, C4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C4 // 4, H, W)


def patch_ids(H: int, W: int, device, dtype) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids of the packed latent: (0, row, column), as FluxPipeline makes them."""
    ids = torch.zeros(H // 2, W // 2, 3)
    ids[..., 1] += torch.arange(H // 2)[:, None]
    ids[..., 2] += torch.arange(W // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


def flux_velocity(transformer, x, t, c):
    """u_theta(x, t, c) of a Flux transformer, (B, C, H, W), for integer timesteps t (B,)."""
    from erasecli.diffusion.noise import flow_level

    states, added = unpack(transformer, c)
    B, _, H, W = x.shape
    guidance = None
    if denoiser_config(transformer).get("guidance_embeds"):
        guidance = torch.full((B,), FLUX_GUIDANCE, device=x.device, dtype=x.dtype)
    out = transformer(hidden_states=patchify(x), encoder_hidden_states=states, timestep=flow_level(t).to(x.dtype),
                      img_ids=patch_ids(H, W, x.device, x.dtype),
                      txt_ids=torch.zeros(states.shape[1], 3, device=x.device, dtype=x.dtype), guidance=guidance,
                      **added).sample
    return unpatchify(out, H, W)


def unet_eps(unet, x, t, c):
    """The denoiser's prediction under a condition tensor from `encode_prompts`: eps_theta(x, t, c) for SD and
    SDXL, the velocity for Flux (erasecli.diffusion.noise.Schedule.eps_from turns either into epsilon)."""
    if kind_of(unet).flow:
        return flux_velocity(unet, x, t, c)
    states, added = unpack(unet, c)
    if added is None:
        return unet(x, t, encoder_hidden_states=states).sample
    return unet(x, t, encoder_hidden_states=states, added_cond_kwargs=added).sample


def encode_prompts(pipe, prompts, device, batch: int = 64) -> torch.Tensor:
    """Condition tensors of prompts, as the pipeline itself encodes them: (P, L, D) for SD, (P, L + 1, D) for
    SDXL. Gradients flow where the caller enables them (a trained text-encoder adapter)."""
    prompts = list(prompts)
    kind = kind_of(pipe)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        if kind.flow:
            states, pooled, _ = pipe.encode_prompt(prompt=chunk, prompt_2=None, device=device, num_images_per_prompt=1,
                                                   max_sequence_length=max_sequence_length(pipe))
            out.append(pack(states, pooled))
            continue
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


def max_sequence_length(pipe) -> int:
    """The T5 length a Flux pipeline's prompts are encoded to: its tokenizer's model_max_length, at most 512."""
    return min(int(pipe.tokenizer_2.model_max_length), MAX_T5)


def token_embedding(text_encoder):
    """The module that turns a text encoder's ids into input embeddings: where a soft-token hook goes.
    get_input_embeddings() for CLIP; transformers' T5 encoder embeds through `encoder.embed_tokens`, a module of
    its own that shares `shared`'s weight (until a resize makes them one), so a hook on get_input_embeddings()
    would not fire there."""
    emb = getattr(getattr(text_encoder, "encoder", None), "embed_tokens", None)
    return emb if isinstance(emb, torch.nn.Module) else text_encoder.get_input_embeddings()


def text_encoders(pipe) -> list:
    """The encoders whose input embeddings a soft-token attack overrides: [te] for SD, [te1, te2] for SDXL."""
    return [getattr(pipe, a) for a in kind_of(pipe).text_encoders]


def tokenizers(pipe) -> list:
    return [getattr(pipe, a) for a in kind_of(pipe).tokenizers]


def per_tokenizer(pipe, ids) -> list:
    """Token ids as one tensor per tokenizer of the base (`tokenizers` order). One tensor is read by every encoder
    (SD; SDXL, whose two tokenizers share CLIP's vocabulary); Flux's CLIP and T5 vocabularies differ, so its ids
    come as a pair."""
    n = len(kind_of(pipe).tokenizers)
    if isinstance(ids, (tuple, list)):
        if len(ids) != n:
            raise ValueError(f"{len(ids)} id tensors for a base with {n} tokenizers")
        return list(ids)
    if not kind_of(pipe).shared_vocabulary:
        raise ValueError("this base's tokenizers have different vocabularies: pass one id tensor per tokenizer "
                         "(erasecli.diffusion.cond.prompt_ids)")
    return [ids] * n


def token_length(pipe, tokenizer) -> int:
    """The length the pipeline pads a tokenizer's ids to: Flux's T5 the pipeline's max_sequence_length, every
    other tokenizer its model_max_length."""
    if kind_of(pipe).flow and tokenizer is getattr(pipe, kind_of(pipe).states_tokenizer):
        return max_sequence_length(pipe)
    return int(tokenizer.model_max_length)


def id_tokenizers(pipe) -> list:
    """The tokenizers whose ids a condition carries: the first alone where every tokenizer shares its vocabulary
    (SD, SDXL: every encoder reads those ids), else each of them (Flux: CLIP's and T5's)."""
    return tokenizers(pipe)[:1] if kind_of(pipe).shared_vocabulary else tokenizers(pipe)


def prompt_ids(pipe, prompts, device="cpu") -> list:
    """The ids each of `id_tokenizers` gives prompts, padded and truncated as the pipeline does: [(N, L_i)]; what
    `encode_ids` reads. On SD and SDXL one tensor (N, L) for every encoder, as `encode_ids` has always read it."""
    toks = id_tokenizers(pipe)
    out = [tk(list(prompts), padding="max_length", max_length=token_length(pipe, tk), truncation=True,
              return_tensors="pt").input_ids.to(device) for tk in toks]
    return out if len(out) > 1 else out[0]


def rows_of(ids, index):
    """ids[index] for one id tensor or for each of a per-tokenizer list."""
    return [x[index] for x in ids] if isinstance(ids, (tuple, list)) else ids[index]


def pooled_ids(pipe, ids) -> torch.Tensor:
    """The pooled (end-of-text) embedding of token ids (B, L): SD's text-encoder pooler output, SDXL's second
    encoder's projection (what the UNet receives), Flux's CLIP pooler output. Input-embedding hooks apply, as in
    `encode_ids`.  (B, Dp)"""
    kind = kind_of(pipe)
    if kind.flow or not kind.added_conditioning:
        return pipe.text_encoder(per_tokenizer(pipe, ids)[0]).pooler_output
    return encode_ids(pipe, ids)[:, -1, : pooled_dim(pipe.unet)]


def encode_ids(pipe, ids) -> torch.Tensor:
    """The condition tensor of token ids (B, L) through the base's encoders, as `encode_prompts` makes it from
    text (forward hooks on the encoders' input embeddings, as the attacks set, apply). `ids` is one tensor or
    one per tokenizer (`per_tokenizer`). On SDXL given one tensor, both encoders read the first tokenizer's ids:
    the same words and positions, though stabilityai's second tokenizer pads with another token, so the padded
    positions' states differ slightly from the pipeline's. On Flux CLIP's ids give the pooled embedding and T5's
    the token states, as FluxPipeline.encode_prompt."""
    kind = kind_of(pipe)
    ids1, ids2 = (per_tokenizer(pipe, ids) + [None])[:2]
    if kind.flow:
        return pack(pipe.text_encoder_2(ids2)[0], pipe.text_encoder(ids1).pooler_output)
    if not kind.added_conditioning:
        return pipe.text_encoder(ids1)[0]
    h1 = pipe.text_encoder(ids1, output_hidden_states=True).hidden_states[-2]
    out2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    states = torch.cat([h1, out2.hidden_states[-2]], dim=-1)  # (B, L, D1 + D2)
    return pack(states, out2.text_embeds, time_ids(pipe))
