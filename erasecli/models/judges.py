"""The tiny world's judges: a digit+colour classifier and a tiny CLIP, both trained on the tiny world.

The classifier is the judge for UA/IRA/CRA on the tiny base and its 128-d penultimate features stand in for
Inception features in FID/KID there. The tiny CLIP (a transformers `CLIPModel`) scores image/text agreement
for CLIP score and CLIP-similarity rewards. Both take images as (B, 3, 32, 32) tensors in [-1, 1], the
range the tiny pipeline's VAE decodes to.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

CLASSIFIER_VERSION = "tiny-classifier-1"
CLIP_VERSION = "tiny-clip-1"


class TinyClassifier(nn.Module):
    """A small CNN with a digit head (10) and a colour head (5) on shared 128-d features, and on the canvas
    world a style head (`n_styles`) too."""

    def __init__(self, n_digits: int = 10, n_colours: int = 5, width: int = 32, feature_dim: int = 128,
                 n_styles: int = 0):
        super().__init__()
        self.config = {"n_digits": n_digits, "n_colours": n_colours, "width": width, "feature_dim": feature_dim}
        if n_styles:
            self.config["n_styles"] = n_styles
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),  # (B, w, 32, 32)
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),  # (B, 2w, 16, 16)
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.SiLU(),  # (B, 4w, 8, 8)
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.SiLU(),  # (B, 4w, 4, 4)
            nn.Flatten(),
            nn.Linear(4 * w * 16, feature_dim), nn.SiLU(),
        )
        self.dropout = nn.Dropout(0.2)
        self.digit_head = nn.Linear(feature_dim, n_digits)
        self.colour_head = nn.Linear(feature_dim, n_colours)
        self.style_head = nn.Linear(feature_dim, n_styles) if n_styles else None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> (B, feature_dim)."""
        return self.body(images)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The label kinds its heads read, in the order `forward` returns them."""
        return ("digit", "colour", "style") if self.style_head is not None else ("digit", "colour")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Digit logits (B, 10) and colour logits (B, 5), then style logits (B, n_styles) when it has them."""
        h = self.dropout(self.features(images))
        if self.style_head is None:
            return self.digit_head(h), self.colour_head(h)
        return self.digit_head(h), self.colour_head(h), self.style_head(h)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"version": CLASSIFIER_VERSION})
        (folder / "config.json").write_text(json.dumps({**self.config, "version": CLASSIFIER_VERSION}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "TinyClassifier":
        from safetensors.torch import load_file

        cfg = json.loads((folder / "config.json").read_text())
        cfg.pop("version", None)
        model = cls(**cfg)
        state = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
        model.load_state_dict(state)
        return model.eval()


def clip_config():
    """The tiny CLIP: SD's vocabulary, 16-token context, a 4x4-patch ViT on 32x32 images."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407,
        ),
        vision_config=dict(
            image_size=32, patch_size=4, num_channels=3, hidden_size=64, intermediate_size=128,
            num_hidden_layers=3, num_attention_heads=4,
        ),
        projection_dim=64,
    )


def _embeds(out) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_text_embeds(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Unit-norm text embeddings (B, D)."""
    return torch.nn.functional.normalize(_embeds(model.get_text_features(input_ids=input_ids)), dim=-1)


def clip_image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings (B, D); tiny CLIP takes images in [-1, 1] as they are."""
    return torch.nn.functional.normalize(_embeds(model.get_image_features(pixel_values=pixel_values)), dim=-1)


def images_to_tensor(images) -> torch.Tensor:
    """PIL images (or uint8 arrays) -> (B, 3, H, W) float in [-1, 1]."""
    import numpy as np

    arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.float32)
                    for im in images])  # (B, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def load_classifier(folder: Path | None = None) -> TinyClassifier:
    """The shipped tiny-world classifier (digit and colour heads)."""
    from erasecli.models.registry import JUDGES_DIR

    return TinyClassifier.load(folder or JUDGES_DIR / "classifier")


def load_clip(folder: Path | None = None):
    """The shipped tiny CLIP and its tokenizer (SD's vocabulary, 16 tokens), in fp32 on the CPU."""
    from transformers import CLIPModel, CLIPTokenizer

    from erasecli.models.registry import JUDGES_DIR

    folder = folder or JUDGES_DIR / "clip"
    return CLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval(), CLIPTokenizer.from_pretrained(str(folder))


def write_clip_preprocessor(folder: Path) -> None:
    """A CLIP image-processor config for the tiny CLIP: no resize or crop (32x32 in), uint8 -> [-1, 1].

    With it, `CLIPProcessor.from_pretrained(folder)` prepares images exactly as the tiny CLIP was trained,
    so the tiny CLIP loads and runs like any hub CLIP."""
    cfg = {
        "image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True,
        "do_resize": False, "size": {"shortest_edge": 32}, "do_center_crop": False,
        "crop_size": {"height": 32, "width": 32}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))


@torch.no_grad()
def classify_all(clf: TinyClassifier, images, batch: int = 256) -> dict[str, torch.Tensor]:
    """Kind -> predicted label index (B,) for PIL images or a [-1, 1] tensor, for every head of `clf`."""
    x = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
    preds: dict[str, list] = {k: [] for k in clf.kinds}
    for i in range(0, len(x), batch):
        for k, logits in zip(clf.kinds, clf(x[i : i + batch])):
            preds[k].append(logits.argmax(1))
    return {k: torch.cat(v) for k, v in preds.items()}


def classify(clf: TinyClassifier, images, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted digit (B,) and colour index (B,) for PIL images or a [-1, 1] tensor."""
    p = classify_all(clf, images, batch)
    return p["digit"], p["colour"]


def classifier_accuracy_on(split: str, clf: TinyClassifier, seed: int = 11, world: str = "digits"):
    """Digit and colour accuracy on every digit of a split, drawn in every colour with seeded shifts; on the
    canvas world (`world="canvas"`, each image in a seeded random style) a dict kind -> accuracy, style too."""
    from erasecli.models.worlds import world as get_world

    w = get_world(world)
    x, labels = w.render_labelled(split, seed)
    pred = classify_all(clf, x)
    acc = {k: (pred[k] == y).float().mean().item() for k, y in zip(w.KINDS, labels)}
    return (acc["digit"], acc["colour"]) if world == "digits" else acc
