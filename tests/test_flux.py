"""The tiny Flux base's parts (erasecli.models.train_flux): its T5 tokenizer and the FluxPipeline folder the
trainer writes, which plain diffusers loads and samples at the tiny world's size."""

import filecmp

import torch

from erasecli.models.registry import TINY_DIR
from erasecli.models.train_flux import MAX_T5, flux_transformer_model, save_flux_pipeline, t5_model, write_t5_tokenizer


def test_the_t5_tokenizer_keeps_caption_words_whole_and_spells_unseen_ones(tmp_path):
    from transformers import T5TokenizerFast

    write_t5_tokenizer(tmp_path / "t5", seed=0)
    tok = T5TokenizerFast.from_pretrained(str(tmp_path / "t5"))
    assert tok.tokenize("a red handwritten digit three") == ["\u2581a", "\u2581red", "\u2581handwritten", "\u2581digit",
                                                              "\u2581three"]
    ids = tok("a stippled three").input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and tok.unk_token_id not in ids
    assert len(tok.tokenize("stippled")) > 1  # not a caption word: spelled in pieces


def test_the_trainer_writes_a_flux_pipeline_plain_diffusers_loads_and_samples(tmp_path):
    """Untrained weights, the trainer's own saving: every component loads in fp32, the VAE weights, CLIP text
    encoder and tokenizer are byte copies of the tiny base's, and a 32x32 image comes out."""
    from diffusers import FluxPipeline
    from transformers import T5TokenizerFast

    write_t5_tokenizer(tmp_path / "t5", seed=0)
    torch.manual_seed(0)
    t5 = t5_model(len(T5TokenizerFast.from_pretrained(str(tmp_path / "t5"))))
    tr = flux_transformer_model(t5.config.d_model, 64)
    save_flux_pipeline(TINY_DIR, tmp_path / "t5", t5, tr, tmp_path / "tiny-flux")
    out = tmp_path / "tiny-flux"
    for sub in ("text_encoder", "tokenizer"):
        assert not filecmp.dircmp(TINY_DIR / sub, out / sub).diff_files
    assert filecmp.cmp(TINY_DIR / "vae" / "diffusion_pytorch_model.safetensors",
                       out / "vae" / "diffusion_pytorch_model.safetensors", shallow=False)
    pipe = FluxPipeline.from_pretrained(str(out))
    assert pipe.vae.config.shift_factor == 0.0 and pipe.transformer.config.in_channels == 16
    assert {m.dtype for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae)} == {torch.float32}
    g = [torch.Generator().manual_seed(0)]
    img = pipe(["a red handwritten digit three"], height=32, width=32, num_inference_steps=2,
               max_sequence_length=MAX_T5, negative_prompt="", true_cfg_scale=5.0, generator=g,
               output_type="pt").images
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
