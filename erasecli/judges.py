"""Judges: image -> label per concept kind. A judge has a name and version stored beside every number."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erasecli.errors import BaseNotFoundError


@dataclass
class Judge:
    name: str
    version: str
    kinds: tuple[str, ...]

    def predict(self, images) -> dict[str, torch.Tensor]:  # kind -> (B,) label index
        raise NotImplementedError

    feature_name: str = ""

    def features_module(self) -> torch.nn.Module | None:
        """A module mapping (B, 3, H, W) images in [-1, 1] to features, for torchmetrics' FID/KID."""
        return None


class _Features(torch.nn.Module):
    """Wraps a feature function as the module torchmetrics expects (it reads `num_features`)."""

    def __init__(self, fn, num_features: int):
        super().__init__()
        self.fn, self.num_features = fn, num_features

    def forward(self, x):
        with torch.no_grad():
            return self.fn(x)


class TinyClassifierJudge(Judge):
    """The shipped classifier of a bundled world: a digit head and a colour head on shared 128-d features, and
    a style head on the canvas world."""

    def __init__(self, world: str = "digits"):
        from erasecli.models.judges import CLASSIFIER_VERSION, load_classifier
        from erasecli.models.registry import judges_dir

        self.model = load_classifier(judges_dir(world) / "classifier")
        name = "tiny-classifier" if world == "digits" else f"tiny-classifier-{world}"
        super().__init__(name, CLASSIFIER_VERSION, self.model.kinds)
        self.feature_name = "tiny-classifier penultimate layer (128-d), not Inception"

    def features_module(self):
        return _Features(self.model.features, self.model.config["feature_dim"])

    def predict(self, images):
        from erasecli.models.judges import classify_all

        return classify_all(self.model, images)


class ClipZeroShotJudge(Judge):
    """CLIP zero-shot per kind: the label whose text (kind -> texts, one per label) is closest to the image."""

    def __init__(self, clip, label_texts: dict):
        super().__init__(f"clip-zero-shot:{clip.name}", clip.version, tuple(label_texts))
        self.clip = clip
        self.text = {k: clip.embed_text(texts) for k, texts in label_texts.items()}
        self.feature_name = f"CLIP image embeddings of {clip.name} (CLIP-FID), not Inception"

    def predict(self, images):
        im = self.clip.embed_images(images)
        return {k: (im @ t.T).argmax(1) for k, t in self.text.items()}

    def features_module(self):
        dim = self.clip.model.config.projection_dim
        return _Features(self.clip.embed_pixels, dim)


class Clip:
    """A CLIP model for zero-shot judging and CLIP score: the shipped tiny CLIP, or a hub/local CLIP."""

    def __init__(self, model, processor, name: str, version: str):
        self.model, self.processor, self.name, self.version = model.eval(), processor, name, version

    @classmethod
    def tiny(cls, world: str = "digits") -> "Clip":
        """The tiny CLIP shipped beside the bundled bases of a world."""
        from erasecli.models.judges import CLIP_VERSION
        from erasecli.models.registry import judges_dir

        clip = cls.load(str(judges_dir(world) / "clip"))
        clip.name = "tiny-clip" if world == "digits" else f"tiny-clip-{world}"
        clip.version = CLIP_VERSION
        return clip

    @classmethod
    def load(cls, name_or_path: str) -> "Clip":
        """A CLIPModel and CLIPProcessor from a local folder or the local HF cache (no download here)."""
        from transformers import CLIPModel, CLIPProcessor

        from erasecli.models.registry import quiet_loading

        quiet_loading()
        try:
            model = CLIPModel.from_pretrained(name_or_path, local_files_only=True, dtype=torch.float32)
            proc = CLIPProcessor.from_pretrained(name_or_path, local_files_only=True)
        except OSError as err:
            raise BaseNotFoundError(
                f"CLIP model {name_or_path!r} for judging is not in the local Hugging Face cache",
                hint=f"run `hf download {name_or_path}` on a machine with internet, or set eval.clip_model to a "
                "local folder",
            ) from err
        return cls(model, proc, name_or_path, getattr(model.config, "_commit_hash", None) or "local")

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_text(self, texts) -> torch.Tensor:
        from erasecli.models.judges import clip_text_embeds

        tok = self.processor.tokenizer
        ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return clip_text_embeds(self.model, ids.to(self.device))

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        from erasecli.models.judges import clip_image_embeds

        pix = self.processor(images=list(images), return_tensors="pt").pixel_values
        return torch.cat([clip_image_embeds(self.model, pix[i : i + 256].to(self.device))
                          for i in range(0, len(pix), 256)])

    @torch.no_grad()
    def embed_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> unit embeddings, resized and normalised as the CLIP's processor would."""
        from erasecli.models.judges import clip_image_embeds

        ip = self.processor.image_processor
        cs = ip.crop_size  # a dict, transformers 5's SizeDict (both index by "height"), or an int
        side = int(cs) if isinstance(cs, (int, float)) else int(cs["height"])
        x = (x.to(self.device) + 1) / 2
        if x.shape[-1] != side or x.shape[-2] != side:
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bicubic", antialias=True)
        mean = torch.tensor(ip.image_mean, device=x.device)[None, :, None, None]
        std = torch.tensor(ip.image_std, device=x.device)[None, :, None, None]
        return clip_image_embeds(self.model, (x - mean) / std)

    def zero_shot_scale(self, temperature: float = 1.0) -> float:
        """The factor on cosine similarities before a zero-shot softmax: CLIP's learnt logit scale (100 for a model
        without one) divided by `temperature`."""
        m = self.model
        return (float(m.logit_scale.detach().exp()) if hasattr(m, "logit_scale") else 100.0) / temperature

    def score(self, images, prompts) -> torch.Tensor:
        """CLIP score per image, torchmetrics' definition: 100 * max(cos(image, prompt), 0)."""
        im = self.embed_images(images)
        tx = self.embed_text(prompts)
        return 100 * (im * tx).sum(-1).clamp(min=0)


def judge_kind(recipe, ref) -> str:
    """'classifier' or 'clip': eval.judge, with 'auto' the shipped classifier on the tiny world, CLIP elsewhere."""
    from erasecli.errors import UsageError

    j = recipe.eval.judge
    if j == "auto":
        return "classifier" if ref.tiny_world else "clip"
    if j == "classifier" and not ref.tiny_world:
        raise UsageError("the shipped classifier judges only the tiny base", hint="use --set eval.judge=clip")
    return j


def make_judges(recipe, base, concept, need_clip: bool):
    """(judge, clip) for evaluating `concept` on `base`: the judge that labels images, and the CLIP that scores
    prompts (None when no metric needs it on the tiny world)."""
    if judge_kind(recipe, base.ref) == "classifier":
        return TinyClassifierJudge(base.ref.world), (Clip.tiny(base.ref.world) if need_clip else None)
    clip = Clip.tiny(base.ref.world) if base.ref.tiny_world else Clip.load(recipe.eval.clip_model)
    return ClipZeroShotJudge(clip, concept.judge_texts), clip
