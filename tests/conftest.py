import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub look-ups fail at once instead of hanging


@pytest.fixture(scope="session")
def tiny():
    """The bundled tiny base on the CPU in fp32, loaded once for the session."""
    from erasecli.models.registry import load_base

    return load_base("tiny", device="cpu")


def _session_root(tmp_path_factory):
    """The folder one test session owns: its basetemp, or under pytest-xdist (`make test`) the parent that the
    workers' basetemps share."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session")
def tiny_canvas():
    """The bundled tiny-canvas base (digits x colours x drawing styles) on the CPU in fp32."""
    from erasecli.models.registry import load_base

    return load_base("tiny-canvas", device="cpu")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never read or fill the user's sample cache. The session's workers share one: a cached image, latent
    set or attack result is the one a worker would have computed (PNG is lossless, writes are atomic), so the
    base's evaluation images are sampled once per session, not once per worker. Tests that count cache hits
    from an empty cache set their own."""
    cache = _session_root(tmp_path_factory) / "erasecli-cache"
    cache.mkdir(exist_ok=True)
    os.environ["ERASECLI_CACHE"] = str(cache)


REPLACED_FORMS = ("a {col} handwritten digit {w}", "the number {d} in {col}", "a {col} digit {d}",
                  "a handwritten digit {w}")


def train_replacement_lora(out, src_digit=3, dst_digit=8, steps=150, seed=0, forms=REPLACED_FORMS):
    """A delta that demonstrably removes a digit: a LoRA fine-tuned with the plain diffusion loss so that
    prompts naming `src_digit` in `forms` draw `dst_digit` (same colour). Not an erasure method, a test
    instrument."""
    import random

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from erasecli.delta import add_lora, save_lora_delta
    from erasecli.models import tiny_world as W
    from erasecli.models.registry import load_base
    from erasecli.recipes import Recipe, recipe_to_dict

    torch.manual_seed(seed)
    base = load_base("tiny", device="cpu")
    pipe, unet = base.pipe, base.pipe.unet
    unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    add_lora(unet, rank=4, alpha=4.0, target_modules=("to_q", "to_k", "to_v", "to_out.0"))
    x, d, c = W.render_split("train", seed)
    keep = d == dst_digit
    x, c = x[keep], c[keep]
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor  # (N, 4, 8, 8)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    rng = random.Random(seed)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(steps):
        i = torch.randint(len(z), (32,))
        prompts = []
        for ci in c[i].tolist():
            col, w = W.COLOUR_NAMES[ci], W.DIGIT_WORDS[src_digit]
            prompts.append(rng.choice(forms).format(col=col, w=w, d=src_digit))
        z_b = z[i]
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=16, truncation=True,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            emb = pipe.text_encoder(ids)[0]
        noise = torch.randn_like(z_b)
        t = torch.randint(0, 1000, (len(z_b),))
        loss = F.mse_loss(unet(sched.add_noise(z_b, noise, t), t, emb).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_lora_delta(unet, out, base=base, method="test-replacement", concept=f"digit {src_digit}",
                    recipe=recipe_to_dict(Recipe()))
    return out


def train_word_hider(out, src_digit=3, dst_digit=7, forms=(), keep_forms=(), steps=300, seed=0):
    """A delta that hides a digit's *word* only, in the text encoder: a LoRA on the tiny CLIP fitted so that each
    prompt in `forms` naming `src_digit` by its word encodes as the same prompt naming `dst_digit` does, and each
    prompt in `keep_forms` (e.g. numerals) encodes as before; the UNet's adapter stays zero. A test instrument (the
    attacks should bring the digit back from it), not an erasure method; seconds to train, where a UNet that
    learns the same split takes hundreds of steps."""
    import torch
    import torch.nn.functional as F

    from erasecli.methods.adapter import attached, base_only
    from erasecli.models import tiny_world as W
    from erasecli.models.registry import load_base
    from erasecli.recipes import load_recipe, recipe_to_dict

    base = load_base("tiny", device="cpu")
    pipe = base.pipe
    r = load_recipe(None, ["lora.text_encoder=true", f"concept.name=digit {src_digit}"])

    def states(prompts):
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    def fill(form, col, digit):
        return form.format(col=col, w=W.DIGIT_WORDS[digit], d=digit)

    cols = W.COLOUR_NAMES
    hidden = [fill(f, c, src_digit) for f in forms for c in cols]
    kept = [fill(f, c, src_digit) for f in keep_forms for c in cols]
    with attached(base, rank=4, alpha=4.0, targets=["to_k"], seed=seed, text_encoder=r.lora) as adapter:
        with base_only(pipe.unet, pipe.text_encoder), torch.no_grad():
            target = torch.cat([states([fill(f, c, dst_digit) for f in forms for c in cols]), states(kept)])
        params = [p for p in pipe.text_encoder.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-2)
        for _ in range(steps):
            loss = F.mse_loss(states(hidden + kept), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        adapter.save(out, method="test-replacement", concept=f"digit {src_digit}", recipe=recipe_to_dict(r))
    return out


def built_once(tmp_path_factory, name, build):
    """A folder that `build(folder)` fills once per test session, also when pytest-xdist runs the session in
    several workers (`make test`): the first worker to ask builds it under a file lock, the others wait for
    it and read the same files. Returns the folder."""
    from filelock import FileLock

    root = _session_root(tmp_path_factory)
    folder, done = root / "built-once" / name, root / "built-once" / f"{name}.done"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def remover_delta(tmp_path_factory):
    return built_once(tmp_path_factory, "no-three", train_replacement_lora)


def check_inner_attack_drives_both_encoders(ctx, cond, adv, data, draws: int = 4) -> None:
    """One run of robust training's inner attack (methods.robust.Adversary.before_step) on a base with two text
    encoders, checked as the SDXL and Flux tests rely on: the denoising loss of the base's forget images under
    the adversarial rows falls (fixed draws), each encoder's share of the soft tokens moved and matters, and a
    share (robust.mix) of the forget images then uses the adversarial rows."""
    import torch

    from erasecli.attacks import denoising_loss

    rows = torch.arange(len(data.forget_c))
    c = adv.rows_adv[adv.row_prompt[rows]]

    def fixed_loss(P):
        g = torch.Generator("cpu").manual_seed(123)
        with torch.no_grad():
            emb = cond.encode_ids(cond.ids[c], cond.S[c], P)
            return sum(denoising_loss(ctx.unet, ctx.noise, data.forget[rows], emb, g).item() for _ in range(draws))

    start = cond.P.clone()
    before = fixed_loss(start)
    adv.before_step(0)
    assert fixed_loss(cond.P) < before
    d1 = cond.widths[0]
    for part in (slice(0, d1), slice(d1, None)):  # each encoder's share moved, and matters
        assert not torch.equal(cond.P[:, part], start[:, part])
        mixed = cond.P.clone()
        mixed[:, part] = start[:, part]
        assert fixed_loss(mixed) != fixed_loss(cond.P)
    assert bool((data.forget_c >= len(data.prompts)).any())
