"""safree: SAFREE (Yoon et al., ICLR 2025, arXiv 2410.12761), a training-free sampling-time guard.

No weights change. `erase unlearn --method safree` encodes the concept's keywords with the base's text encoder
(their pooled embeddings span the concept subspace) and writes them with the settings as a guard folder
(erasecli.delta.save_guard); `erase sample / evaluate / attack --guard DIR` put the filter on the text encoder and
the UNet (erasecli.diffusion.safree): each prompt's trigger tokens have their states projected away from the
subspace, within the prompt's own input space, for the first steps of the trajectory (self-validating
filtering). The paper's latent re-attention (a Fourier-domain step inside the UNet) is not built.
docs/methods.md, "safree".
"""

from __future__ import annotations

from erasecli.errors import UsageError
from erasecli.methods.sld import Sld


class Safree(Sld):
    name = "safree"
    kinds = ("sd", "sdxl")  # its projection and filter act on CLIP token embeddings; Flux's sequence is T5's

    @classmethod
    def settings(cls, recipe) -> dict:
        s = recipe.safree
        return {"alpha": s.alpha, "svf": s.svf, "svf_steps": s.svf_steps, "svf_midpoint": s.svf_midpoint,
                "svf_sharpness": s.svf_sharpness, "positions": s.positions}

    @classmethod
    def keywords(cls, recipe, concept) -> list[str]:
        """The texts that span the concept subspace: the recipe's, else the tiny world's words or the names."""
        if recipe.safree.keywords:
            return [k.strip() for k in recipe.safree.keywords]
        if concept.tiny_world:
            from erasecli.models import tiny_world as W

            out = []
            for t in concept.targets:
                if concept.kind == "digit":
                    w = W.DIGIT_WORDS[t]
                    out += [w, f"digit {w}", f"a handwritten digit {w}"]
                elif concept.kind == "colour":
                    w = W.COLOUR_NAMES[t]
                    out += [w, f"{w} digit", f"a {w} digit"]
                else:
                    w = concept.label_names["style"][t]
                    out += [w, f"{w} style", f"a digit in {w} style"]
            return out
        return list(concept.names)

    @classmethod
    def build(cls, recipe, base, concept) -> tuple[dict, dict]:
        """({"keywords": (K, D) pooled text embeddings}, the settings dict)."""
        import torch

        from erasecli.diffusion.cond import added_conditioning

        if added_conditioning(base.pipe.unet):
            raise UsageError(f"safree is built for SD-1.x / 2.x bases here, and {base.name} is an SDXL pipeline",
                             hint="use sld for a guard on SDXL, or a trained method")
        words = cls.keywords(recipe, concept)
        tok = base.pipe.tokenizer(words, padding="max_length", max_length=base.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")
        with torch.no_grad():
            pooled = base.pipe.text_encoder(tok.input_ids.to(base.device)).pooler_output
        return {"keywords": pooled.float()}, {**cls.settings(recipe), "keywords": words}
