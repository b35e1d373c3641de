"""The adapter's life, in one place: attach (denoiser and text encoders), its trainable parameters, its state for
checkpoints, the delta it saves, and detach. Every method goes through `attached`, a context manager, so a base
passed in by a caller always goes back as it came (no teardown in anybody's `finally`):

    with attached(base, rank=4, alpha=4.0, targets=[...], seed=0, text_encoder=recipe.lora) as adapter:
        ... train adapter.params, or write closed-form factors into adapter.layers() ...
        adapter.save(out, method=..., concept=..., recipe=...)

The LoRA layers are peft's (`add_adapter` on the diffusers denoiser, `inject_adapter_in_model` on the text
encoders); the delta is written by the base kind's own pipeline class (erasecli.delta.save_lora_delta), so
`pipe.load_lora_weights(folder)` reads it with no erasecli code.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from erasecli.errors import EraseError

ADAPTER = "default"  # peft's adapter name for the one being trained


def expand_targets(targets, flow: bool = False) -> list[str]:
    """LoRA target modules; the words attn / xattn / noxattn expand to ESD's parameter subsets [ours as LoRA]:
    xattn = cross-attention (attn2) projections (ESD-x); noxattn = self-attention (attn1) and feed-forward
    (ESD-u without the convolutions); attn = both attentions' projections (the default set).
    On a Flux transformer (`flow`), where text and image attend jointly, the text enters through the double
    blocks' text-stream projections (add_q/k/v_proj, to_add_out): xattn is those; noxattn the image stream's
    attention (to_q/k/v, to_out.0: the single blocks' too) and feed-forward; attn both streams' projections.
    A UNet cross-attention's module names read on Flux as the joint attention's parts that play their role: the
    text tokens' keys and values (attn2.to_k / to_v: add_k_proj / add_v_proj), the image tokens' queries
    (attn2.to_q: to_q) and the image stream's output projection (attn2.to_out.0: to_out.0, the double blocks'
    only), so a SD recipe's cross-attention LoRA (ac's, receler's eraser) has a place on Flux."""
    proj = ("to_q", "to_k", "to_v", "to_out.0")
    if flow:
        text = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
        presets = {"xattn": list(text), "noxattn": [*proj, "ff.net.0.proj", "ff.net.2"], "attn": [*proj, *text],
                   "attn2.to_q": ["to_q"], "attn2.to_k": ["add_k_proj"], "attn2.to_v": ["add_v_proj"],
                   "attn2.to_out.0": ["to_out.0"]}
    else:
        presets = {
            "xattn": [f"attn2.{p}" for p in proj],
            "noxattn": [f"attn1.{p}" for p in proj] + ["ff.net.0.proj", "ff.net.2"],
            "attn": list(proj),
        }
    out: list[str] = []
    for t in targets:
        out += presets.get(t, [t])
    return list(dict.fromkeys(out))


def has_adapter(module) -> bool:
    """Whether a model carries LoRA layers (ours, or ones diffusers' loader put there)."""
    return any("lora_" in n for n, _ in module.named_parameters())


def add_text_encoder_lora(lora, text_encoder) -> None:
    """A fresh trainable peft LoRA on a text encoder's attention projections (lora_B zero: a no-op at first).
    peft's own injection, not transformers' `add_adapter`: transformers 5.24 wants a peft (>= 0.22) that the
    package index does not have yet, while diffusers' loader reads the result either way. `lora`: the recipe's
    `lora` section (rank, alpha, text_encoder_modules)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=lora.rank, lora_alpha=lora.alpha,
                                       target_modules=list(lora.text_encoder_modules), init_lora_weights=True),
                            text_encoder, adapter_name=ADAPTER)


def remove_text_encoder_lora(text_encoder) -> None:
    """Take the training adapter off a text encoder again."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    delete_adapter_layers(text_encoder, ADAPTER)
    cfg = getattr(text_encoder, "peft_config", None)
    if cfg is not None:
        cfg.pop(ADAPTER, None)
        if not cfg:  # as it came: peft warns of "multiple adapters" when a leftover empty dict is found
            del text_encoder.peft_config


def peft_state(model) -> dict:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_peft_state(model, state: dict) -> None:
    from peft.utils import set_peft_model_state_dict

    res = set_peft_model_state_dict(model, state)
    unexpected = [k for k in getattr(res, "unexpected_keys", []) if "lora" in k]
    if unexpected:
        raise EraseError(f"checkpoint adapter does not fit: unexpected keys {unexpected[:3]}")


class Adapter:
    """The LoRA being trained (or solved) on a base: `modules` {pipeline attribute: model} it lives on, `params`
    the trainable tensors (fp32)."""

    def __init__(self, base, modules: dict, params: list):
        self.base, self.modules, self.params = base, modules, params

    @property
    def denoiser(self):
        return self.modules[self.base.kind.denoiser]

    @property
    def text_encoders(self) -> dict:
        """{attribute: text encoder} of the encoders that carry a trained adapter."""
        den = self.base.kind.denoiser
        return {a: m for a, m in self.modules.items() if a != den}

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def state_dict(self) -> dict:
        """Checkpoint keys: `adapter` (the denoiser's), `adapter_<text encoder attribute>` for each encoder."""
        den = self.base.kind.denoiser
        return {("adapter" if a == den else f"adapter_{a}"): peft_state(m) for a, m in self.modules.items()}

    def load_state_dict(self, state: dict) -> None:
        den = self.base.kind.denoiser
        for a, m in self.modules.items():
            s = state.get("adapter" if a == den else f"adapter_{a}")
            if s:
                load_peft_state(m, s)

    def save(self, out, **meta):
        """The delta folder (erasecli.delta.save_lora_delta; `meta`: method, concept, concepts, recipe, metrics,
        overwrite, extra)."""
        from erasecli.delta import save_lora_delta

        return save_lora_delta(self.denoiser, out, base=self.base, text_encoders=self.text_encoders or None, **meta)

    def detach(self) -> None:
        self.denoiser.delete_adapters(ADAPTER)
        for te in self.text_encoders.values():
            remove_text_encoder_lora(te)


@contextmanager
def attached(base, *, rank: int, alpha: float, targets, seed: int | None = None, text_encoder=None):
    """Freeze the base, attach a fresh LoRA (rank, alpha, denoiser `targets` as recipe words or module names) and,
    with `text_encoder` (the recipe's `lora` section, when lora.text_encoder is on), one on each text encoder;
    yields the Adapter and takes every layer off again on the way out. `seed` seeds peft's lora_A init (drawn
    from the global generator), so a resumed run starts from the same adapter."""
    from erasecli.delta import add_lora

    pipe, kind = base.pipe, base.kind
    den = getattr(pipe, kind.denoiser)
    encoders = {a: getattr(pipe, a) for a in kind.text_encoders}
    for m in (den, pipe.vae, *encoders.values()):
        m.requires_grad_(False)
    if seed is not None:
        torch.manual_seed(seed)
    add_lora(den, rank, alpha, expand_targets(targets, kind.flow))
    modules = {kind.denoiser: den}
    if text_encoder is not None:
        for a, te in encoders.items():
            add_text_encoder_lora(text_encoder, te)
            modules[a] = te
        for a in kind.penultimate_only:  # the denoiser reads this encoder's penultimate states: its last layer's
            last = f"layers.{encoders[a].config.num_hidden_layers - 1}."  # adapter never acts
            for n, p in encoders[a].named_parameters():
                if last in n and "lora_" in n:
                    p.requires_grad_(False)
    params = [p for m in (den, *encoders.values()) for p in m.parameters() if p.requires_grad]
    for p in params:  # trainable weights in fp32, whatever the base's dtype (docs/methods.md, "Training rules")
        p.data = p.data.float()
    adapter = Adapter(base, modules, params)
    try:
        yield adapter
    finally:
        adapter.detach()


def attached_for(lora, base, seed: int):
    """`attached` with a recipe's lora section (recipes.schema.LoraConfig) and the training seed: the adapter a
    training method trains."""
    return attached(base, rank=lora.rank, alpha=lora.alpha, targets=lora.target_modules, seed=seed,
                    text_encoder=lora if lora.text_encoder else None)


@contextmanager
def base_only(unet, *text_encoders):
    """theta*: the frozen base, every adapter of the UNet and the text encoders off while inside."""
    from diffusers.utils.peft_utils import set_adapter_layers

    tes = [te for te in text_encoders if te is not None and has_adapter(te)]
    unet.disable_adapters()
    for te in tes:
        set_adapter_layers(te, enabled=False)
    try:
        yield
    finally:
        unet.enable_adapters()
        for te in tes:
            set_adapter_layers(te, enabled=True)
