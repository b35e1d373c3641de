"""Base kinds: what differs between model families, decided once per base and read everywhere else.

A kind is a plain record: the diffusers pipeline class, the denoiser's attribute (`unet`), the text encoders
and tokenizers a prompt goes through, whether the denoiser takes added conditioning (SDXL's pooled embedding and
time ids, packed as one extra row of the condition tensor: erasecli.diffusion.cond), the kohya layout its
export uses, and which layers a closed-form edit (uce, rece) may re-solve (the noise schedule comes from the pipeline's own
scheduler: erasecli.diffusion.noise.schedule_of). `kind_of` is the one test of "which family is
this": every module that must know asks it, or reads a field of the kind it returns.

Adding a family (a flow-matching transformer such as Flux, which is here, or SD3) is one new entry in KINDS plus its
conditioning in cond.py (how prompts are encoded and how the denoiser is called) and its schedule in noise.py;
`kind_of` learns to recognise its denoiser's config and `pipeline_classes` its pipeline class. The rest of
erasecli reads the fields below (docs/methods.md, "Base kinds").
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Kind:
    name: str  # "sd", "sdxl", "flux"
    pipeline_class: str  # the diffusers class that loads, samples and saves LoRA for this family
    denoiser: str = "unet"  # the pipeline attribute holding the denoiser the adapter goes on
    text_encoders: tuple = ("text_encoder",)  # pipeline attributes, in the order their states are concatenated
    tokenizers: tuple = ("tokenizer",)
    added_conditioning: bool = False  # the denoiser also takes a pooled text embedding and time ids (SDXL)
    penultimate_only: tuple = ()  # encoders whose last layer's output the denoiser never reads (SDXL's first)
    kohya_layout: str = "sd"  # "sd": lora_unet_<diffusers module>, lora_te_; "sgm": SDXL's original layout, lora_te1_/2_
    closed_form_targets: tuple = ("attn2.to_k", "attn2.to_v")  # the projections of the text states uce may re-solve
    pooled_target: str = ""  # the layer that first reads the pooled text embedding (its leading input columns), if any
    load_kwargs: dict = field(default_factory=dict)  # what from_pretrained gets besides dtype
    lora_encoders: tuple | None = None  # the text encoders the pipeline's LoRA loader reads (None: all of them)
    flow: bool = False  # a rectified-flow model: velocity prediction, packed latents (erasecli.diffusion.cond)
    states_tokenizer: str = "tokenizer"  # the tokenizer of the token states the denoiser reads (uce aligns by it)
    causal_states: bool = True  # a token's state depends on the tokens before it only (CLIP: yes; T5: no)
    shared_vocabulary: bool = True  # every tokenizer gives a word the same id (SDXL's two CLIP BPEs; not Flux's T5)
    embedding_keys: tuple = ()  # a textual-inversion file's key per text encoder when there are several

    @property
    def lora_text_encoders(self) -> tuple:
        return self.text_encoders if self.lora_encoders is None else self.lora_encoders

    @property
    def lora_layers_kwargs(self) -> dict:
        """{pipeline attribute: save_lora_weights keyword} for the denoiser and each text encoder it saves."""
        return {a: f"{a}_lora_layers" for a in (self.denoiser, *self.lora_text_encoders)}


KINDS: dict[str, Kind] = {
    # No safety checker: erasure research must see what the model draws (the checker blacks it out).
    "sd": Kind("sd", "StableDiffusionPipeline",
               load_kwargs={"safety_checker": None, "requires_safety_checker": False}),
    # The invisible watermark would change every image erasecli judges.
    "sdxl": Kind("sdxl", "StableDiffusionXLPipeline", text_encoders=("text_encoder", "text_encoder_2"),
                 tokenizers=("tokenizer", "tokenizer_2"), added_conditioning=True, penultimate_only=("text_encoder",),
                 kohya_layout="sgm", pooled_target="add_embedding.linear_1", embedding_keys=("clip_l", "clip_g"),
                 load_kwargs={"add_watermarker": False}),
    # FLUX.1: a joint-attention transformer on 2x2-packed latents, T5 token states (text_encoder_2) plus CLIP's
    # pooled embedding (text_encoder); FluxPipeline's LoRA loader reads the transformer and CLIP only.
    "flux": Kind("flux", "FluxPipeline", denoiser="transformer", text_encoders=("text_encoder", "text_encoder_2"),
                 tokenizers=("tokenizer", "tokenizer_2"), added_conditioning=True, kohya_layout="flux",
                 closed_form_targets=("context_embedder",), pooled_target="time_text_embed.text_embedder.linear_1",
                 lora_encoders=("text_encoder",), flow=True, states_tokenizer="tokenizer_2", causal_states=False,
                 shared_vocabulary=False, embedding_keys=("clip_l", "t5")),
}


def pipeline_classes() -> tuple:
    return tuple(k.pipeline_class for k in KINDS.values())


def kind_for_pipeline(class_name: str) -> Kind:
    """The kind of a pipeline class named in a model_index.json."""
    for k in KINDS.values():
        if k.pipeline_class == class_name:
            return k
    raise ValueError(f"no base kind loads {class_name or 'a pipeline of no class'}; "
                     f"known: {', '.join(pipeline_classes())}")


def denoiser_config(model) -> dict:
    model = getattr(model, "module", model)  # through a DistributedDataParallel wrapper
    cfg = getattr(model, "config", model)
    return cfg if isinstance(cfg, dict) else dict(cfg)


def kind_of(obj) -> Kind:
    """The kind of a loaded pipeline, a `models.registry.Base`, a denoiser, or a denoiser's config dict.

    Decided from the denoiser's own config, so a UNet handed over alone (a method's context, a wrapped model)
    answers the same as its pipeline: SDXL's UNet takes added text-and-time conditioning, SD's does not."""
    pipe = getattr(obj, "pipe", obj)  # a Base
    for k in KINDS.values():
        den = getattr(pipe, k.denoiser, None)
        if den is not None and not isinstance(den, dict):
            return kind_of(den)
    cfg = denoiser_config(pipe)
    if "axes_dims_rope" in cfg:  # FluxTransformer2DModel (SD3's transformer has no RoPE)
        return KINDS["flux"]
    if cfg.get("addition_embed_type") == "text_time":
        return KINDS["sdxl"]
    if "cross_attention_dim" in cfg:
        return KINDS["sd"]
    raise ValueError(f"cannot tell the base kind of {type(obj).__name__}")
