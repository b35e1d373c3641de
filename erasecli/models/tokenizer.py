"""Build the Stable Diffusion CLIP tokenizer offline from OpenAI's BPE file.

SD's tokenizer (`openai/clip-vit-large-patch14`) is a byte-level BPE whose vocabulary and merges both come
from `bpe_simple_vocab_16e6.txt.gz`, the file OpenAI's CLIP code reads. `clip-anytorch` and
`open_clip_torch` ship that file inside their wheels, so the real tokenizer can be rebuilt with no hub
access. The construction below is CLIP's own (`SimpleTokenizer.__init__`): 256 byte symbols, the same with
an end-of-word mark, one token per merge, then the two special tokens; 49,408 entries in all.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file.


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which CLIP's BPE is written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tokenizer_files(bpe_gz: Path, out_dir: Path, model_max_length: int) -> None:
    """Write `vocab.json`, `merges.txt` and `tokenizer_config.json` in the layout CLIPTokenizer loads."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    # Saved explicitly: without it transformers 5 sets model_max_length to ~1e30 (FACTS.md).
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        vocab=str(out_dir / "vocab.json"), merges=str(out_dir / "merges.txt"), model_max_length=model_max_length
    )
    tok.save_pretrained(str(out_dir))
