"""Check the ImageReward shim end to end where the real weights cannot be downloaded.

Builds a throwaway Hugging Face cache holding ImageReward's med_config.json (BLIP-large text config), a
small WordPiece vocabulary standing in for bert-base-uncased's, and a randomly initialised ImageReward
checkpoint saved as a plain state dict, then runs erasecli's loader (cache lookup, the four shims,
`weights_only=True` load) and scores images. Needs `pip install 'erasecli[imagereward]'`.

    python scripts/check_imagereward.py
"""

import json
import os
import tempfile
import time
from pathlib import Path

MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524,
    "encoder_width": 1024, "add_cross_attention": True,
}


def put(cache: Path, repo: str, files: dict) -> Path:
    rev = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap


def main():
    cache = Path(tempfile.mkdtemp()) / "hub"
    os.environ["HF_HUB_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a red handwritten digit three of the in painting".split()
    put(cache, "bert-base-uncased", {"vocab.txt": "\n".join(words) + "\n",
                                     "tokenizer_config.json": json.dumps({"do_lower_case": True})})
    snap = put(cache, "THUDM/ImageReward", {"med_config.json": json.dumps(MED_CONFIG)})

    import torch
    from PIL import Image

    from erasecli.eval import imagereward as ir

    cls = ir._import_patched()
    t0 = time.time()
    random_model = cls(med_config=str(snap / "med_config.json"), device="cpu")
    # ImageReward initialises every MLP layer with std 1/769, so a random model's raw reward is ~0 for any
    # image and the normalised score a constant (-mean/std). PyTorch's default init makes the image matter.
    for layer in random_model.mlp.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    torch.save(random_model.state_dict(), snap / "ImageReward.pt")
    print(f"built a random ImageReward ({sum(p.numel() for p in random_model.parameters()) / 1e6:.0f} M "
          f"parameters) in {time.time() - t0:.1f} s")
    del random_model
    t0 = time.time()
    model = ir.load("cpu")  # cache lookup, shims, weights_only=True load of the checkpoint
    print(f"erasecli.eval.imagereward.load: {time.time() - t0:.1f} s")
    import numpy as np

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), Image.new("RGB", (32, 32), "red")]
    t0 = time.time()
    s = ir.scores(model, imgs, ["a red handwritten digit three"] * 2)
    print(f"scores {s.tolist()} in {(time.time() - t0) / len(imgs):.2f} s per image")
    assert torch.isfinite(s).all() and s[0] != s[1]


if __name__ == "__main__":
    main()
