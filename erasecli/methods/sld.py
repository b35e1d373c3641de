"""sld: Safe Latent Diffusion (Schramowski et al., CVPR 2023, arXiv 2211.05105), a sampling-time guard.

No weights change. `erase unlearn --method sld` encodes the safety concept (and the empty prompt) with the
base's text encoders and writes them with the settings as a guard folder (erasecli.delta.save_guard); `erase
sample / evaluate / attack --guard DIR` put it on the UNet (erasecli.diffusion.guard), where every step's
prediction p becomes p - g with g = mu (S - u) + momentum, mu non-zero where p and the safety concept's
prediction S are close. The paper's four presets (weak, medium, strong, max) are diffusers' former
StableDiffusionPipelineSafe's numbers; their warm-up counts steps of a 50-step trajectory and is applied as
that share of any trajectory. docs/methods.md, "sld".
"""

from __future__ import annotations

from typing import ClassVar

from erasecli.methods import Method

KEYS = ("guidance_scale", "warmup_steps", "threshold", "momentum_scale", "mom_beta")


class Sld(Method):
    name = "sld"
    guard: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = False
    supports_robust: ClassVar[bool] = False
    supports_text_encoder: ClassVar[bool] = False
    why_not_robust: ClassVar[str] = "it is a sampling-time guard: no weights change"
    kinds = ("sd", "sdxl", "flux")  # on Flux the guard acts on the noise prediction its velocity implies

    @classmethod
    def uses_images(cls, recipe) -> bool:
        return False

    @classmethod
    def settings(cls, recipe) -> dict:
        """The preset's five values with the recipe's overrides, plus the warm-up as a share of a trajectory."""
        from erasecli.diffusion.guard import PAPER_STEPS, PRESETS

        s = recipe.sld
        values = {k: (getattr(s, k) if getattr(s, k) is not None else PRESETS[s.preset][k]) for k in KEYS}
        return {"preset": s.preset, **values, "warmup": values["warmup_steps"] / PAPER_STEPS}

    @classmethod
    def concept_text(cls, recipe, concept) -> str:
        """The safety concept: the recipe's text, else a caption of the world's own words (tiny) or the name."""
        if recipe.sld.concept_text.strip():
            return recipe.sld.concept_text.strip()
        if concept.tiny_world:
            from erasecli.concepts import label_phrase

            return ", ".join(label_phrase(concept.kind, t) for t in concept.targets)
        return ", ".join(concept.names)

    @classmethod
    def build(cls, recipe, base, concept) -> tuple[dict, dict]:
        """({"concept": (1, L, D), "uncond": (1, L, D)} condition tensors, the settings dict)."""
        import torch

        from erasecli.diffusion.cond import encode_prompts

        text = cls.concept_text(recipe, concept)
        with torch.no_grad():
            c = encode_prompts(base.pipe, [text, ""], base.device)
        return {"concept": c[:1], "uncond": c[1:]}, {**cls.settings(recipe), "concept_text": text}
