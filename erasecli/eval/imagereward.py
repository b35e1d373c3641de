"""ImageReward (Xu et al. 2023; PyPI `image-reward` 1.5) on current transformers: an optional metric.

image-reward 1.5 is the last release on PyPI (2023). Against transformers >= 5 it fails in four places,
which this shim mends, for ImageReward's own BLIP code only, before that code is imported or built:

1. `med.py` imports `apply_chunking_to_forward`, `find_pruneable_heads_and_indices` and `prune_linear_layer`
   from `transformers.modeling_utils`. The first and last live in `transformers.pytorch_utils` now; the
   middle one is gone (it served head pruning, which scoring never calls), so we supply our own. We add
   these names where the old import looks; nothing existing is replaced.
2. `blip.init_tokenizer` reads `tokenizer.additional_special_tokens_ids`, gone in transformers 5; ours
   looks the `[ENC]` id up with `convert_tokens_to_ids` and loads `bert-base-uncased` from the local cache.
3. `med.BertPreTrainedModel.init_weights` no longer applies `_init_weights` to every module; ours does.
4. `invert_attention_mask` and `get_head_mask` left `PreTrainedModel`; we give ImageReward's BERT its own
   copies with the transformers 4 semantics.
It also needs the `clip` module it imports without declaring (`clip-anytorch`) and `pkg_resources`
(`setuptools<81`): `pip install 'erasecli[imagereward]'` brings them. The checkpoint (`ImageReward.pt`,
`med_config.json` from THUDM/ImageReward) and the `bert-base-uncased` tokenizer must be in the local Hugging
Face cache; we load the checkpoint with `weights_only=True` (it is a plain state dict).
"""

from __future__ import annotations

import importlib.util

import torch

from erasecli.errors import BaseNotFoundError, EraseError

IR_REPO = "THUDM/ImageReward"
IR_FILES = ("ImageReward.pt", "med_config.json")
INSTALL_HINT = "pip install 'erasecli[imagereward]' (image-reward 1.5, clip-anytorch, setuptools<81)"
FETCH_HINT = f"run `hf download {IR_REPO} {' '.join(IR_FILES)}` and `hf download bert-base-uncased` with internet"


def check_available() -> None:
    """Fail at once, before any sampling, when the package or its weights are not here."""
    missing = [m for m in ("ImageReward", "clip", "timm", "fairscale") if importlib.util.find_spec(m) is None]
    if missing:
        raise EraseError(f"the imagereward metric needs packages that are not installed: {', '.join(missing)}",
                         hint=INSTALL_HINT)
    _weights()


def _weights() -> dict:
    from huggingface_hub import try_to_load_from_cache

    found = {f: try_to_load_from_cache(IR_REPO, f) for f in IR_FILES}
    found["tokenizer"] = try_to_load_from_cache("bert-base-uncased", "vocab.txt")
    absent = [k for k, v in found.items() if not isinstance(v, str)]
    if absent:
        raise BaseNotFoundError(f"ImageReward files not in the local Hugging Face cache: {', '.join(absent)}",
                                hint=FETCH_HINT)
    return found


def _invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """transformers 4's ModuleUtilsMixin.invert_attention_mask: 1 keeps, 0 masks with the dtype's minimum."""
    if encoder_attention_mask.dim() == 3:
        ext = encoder_attention_mask[:, None, :, :]
    else:
        ext = encoder_attention_mask[:, None, None, :]
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False):
    """transformers 4's ModuleUtilsMixin.get_head_mask: None, or a per-layer broadcastable mask."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None, None, :, None, None].expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask[:, None, :, None, None]
    head_mask = head_mask.to(dtype=self.dtype)
    if is_attention_chunked:
        head_mask = head_mask.unsqueeze(-1)
    return head_mask


def _find_pruneable_heads_and_indices(heads, n_heads: int, head_size: int, already_pruned_heads: set):
    """transformers 4's helper for head pruning: the heads still to prune and the indices of rows to keep."""
    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        head -= sum(1 for h in already_pruned_heads if h < head)  # earlier pruning shifted the indices
        mask[head] = 0
    keep = mask.view(-1).eq(1)
    return heads, torch.arange(len(keep))[keep].long()


def _init_tokenizer():
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained("bert-base-uncased", local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    return tok


def _import_patched():
    """Import ImageReward's model class with the four mends above in place."""
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    ours = {"find_pruneable_heads_and_indices": _find_pruneable_heads_and_indices}
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(mu, name):
            setattr(mu, name, getattr(pu, name, None) or ours[name])
    from ImageReward.models.BLIP import blip, blip_pretrain, med

    blip.init_tokenizer = blip_pretrain.init_tokenizer = _init_tokenizer
    med.BertPreTrainedModel.init_weights = lambda self: self.apply(self._init_weights)
    med.BertPreTrainedModel.invert_attention_mask = _invert_attention_mask
    med.BertPreTrainedModel.get_head_mask = _get_head_mask
    from ImageReward.ImageReward import ImageReward

    return ImageReward


def load(device="cpu", checkpoint: bool = True):
    """The ImageReward model on `device`; `checkpoint=False` keeps random weights (for tests of the shim)."""
    check_available()
    files = _weights()
    model_cls = _import_patched()
    model = model_cls(med_config=files["med_config.json"], device=device)
    if checkpoint:
        state = torch.load(files["ImageReward.pt"], map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=False)
    return model.to(device).eval()


@torch.no_grad()
def scores(model, images, prompts) -> torch.Tensor:
    """ImageReward per (image, prompt) pair."""
    out = []
    for img, prompt in zip(images, prompts):
        s = model.score(prompt, [img])
        out.append(float(s[0] if isinstance(s, (list, tuple)) else s))
    return torch.tensor(out)
