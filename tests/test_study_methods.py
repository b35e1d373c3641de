"""The comparison study's methods (docs/methods.md): each one's loss checked against the same quantity computed
here by hand on a two-row case with the real tiny UNet, from the same random draws."""

from contextlib import contextmanager

import pytest
import torch

from erasecli.recipes import load_recipe


@contextmanager
def _two_row_context(tiny, method, *sets, targets=("attn2.to_k", "attn2.to_v"), retain=0):
    """A Context on two forget / anchor rows of random latents ("a red handwritten digit three" and its anchor),
    batch 2, `retain` retain rows (random latents under the anchor prompt), with a fresh LoRA on the
    cross-attention k / v that is taken off on the way out."""
    from erasecli.concepts import tiny_concept
    from erasecli.data import TrainData
    from erasecli.diffusion.cond import encode_prompts
    from erasecli.diffusion.noise import schedule_of
    from erasecli.methods import Context
    from erasecli.methods.adapter import attached

    r = load_recipe(None, [f"method={method}", "concept.name=digit 3", "train.batch_size=2", *sets])
    prompts = ["", "a red handwritten digit three", "a red handwritten digit"]
    g = torch.Generator("cpu").manual_seed(7)
    with torch.no_grad():
        embeds = encode_prompts(tiny.pipe, prompts, tiny.device)
    data = TrainData(prompts=prompts, embeds=embeds, forget=torch.randn(2, 4, 8, 8, generator=g),
                     forget_c=torch.tensor([1, 1]), anchor=torch.randn(2, 4, 8, 8, generator=g),
                     anchor_c=torch.tensor([2, 2]), retain=torch.randn(retain, 4, 8, 8, generator=g),
                     retain_c=torch.full((retain,), 2, dtype=torch.long), sets=tiny_concept("digit 3", "digit"))
    with attached(tiny, rank=4, alpha=4.0, targets=list(targets), seed=0) as adapter:
        yield Context(recipe=r, base=tiny, unet=adapter.denoiser, adapter=adapter, data=data,
                      gen=torch.Generator("cpu").manual_seed(0), noise=schedule_of(tiny.pipe.scheduler),
                      device=tiny.device)


def test_siss_retain_target_base_is_the_frozen_bases_own_prediction(tiny):
    """siss.retain_target base: L_r is the distance to what the base predicts on the same noisy retain input, so
    it is 0 while the adapter is a no-op and, once the adapter moves, the squared error to the base's prediction
    (not to the noise drawn, which `noise` keeps)."""
    from erasecli.methods.adapter import base_only
    from erasecli.methods.losses import mse
    from erasecli.methods.siss import SissBatch

    for target in ("base", "noise"):
        with _two_row_context(tiny, "siss", f"siss.retain_target={target}", "data.uncond_fraction=0",
                              retain=2) as ctx:
            b = SissBatch(ctx, 0.5)
            err_r = b.errors(ctx)[2]
            if target == "base":
                assert float(err_r.detach().abs().max()) < 1e-8, err_r  # lora_B starts at zero: the model is the base
            with torch.no_grad():
                for p in ctx.params:
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
                err_r = b.errors(ctx)[2]
                e_r = ctx.eps(b.m_r, b.t_r, b.c_r)
                with base_only(ctx.unet):
                    e_base = ctx.eps(b.m_r, b.t_r, b.c_r)
            want = mse(e_r, e_base if target == "base" else b.eps_r)
            torch.testing.assert_close(err_r, want, rtol=1e-4, atol=1e-7)
            assert float(err_r.min()) > 0


def _noisy_forget_draws(tiny, ctx):
    """The draws an xt_source 'data' step is about to make, in its order: forget rows i, t, and x_t noised by hand."""
    d, g = ctx.data, torch.Generator("cpu")
    g.set_state(ctx.gen.get_state())
    i = torch.randint(len(d.forget), (2,), generator=g)
    t = torch.randint(1000, (2,), generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    abar = tiny.pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    return i, t, abar.sqrt() * d.forget[i] + (1 - abar).sqrt() * eps  # forward noising of the forget latents


@pytest.mark.parametrize("loss, target_from", [("model", "model"), ("model", "base"), ("noise", "model")])
def test_ac_loss_and_gradient_by_hand(tiny, loss, target_from):
    from erasecli.methods.ac import Ac

    with _two_row_context(tiny, "ac", f"ac.loss={loss}", f"ac.target_from={target_from}") as ctx:
        unet, d = ctx.unet, ctx.data
        g = torch.Generator("cpu")
        g.set_state(ctx.gen.get_state())  # the draws the step is about to make, in its order
        i = torch.randint(len(d.anchor), (2,), generator=g)
        t = torch.randint(1000, (2,), generator=g)
        eps = torch.randn(2, 4, 8, 8, generator=g)
        abar = tiny.pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * d.anchor[i] + (1 - abar).sqrt() * eps  # forward noising of the anchor images

        def pred(c):
            return unet(x_t, t, encoder_hidden_states=d.embeds[d.anchor_c[i] if c == "anchor" else d.forget_c[i]]
                        ).sample

        with torch.no_grad():
            e_base_anchor = pred("anchor")  # lora_B is zero: the model is still the base
        torch.manual_seed(1)
        for p in ctx.params:  # move the adapter off zero, so the model's and the base's predictions differ
            p.data += 0.05 * torch.randn_like(p)
        with torch.no_grad():
            e_model_anchor = pred("anchor")
        assert (e_model_anchor - e_base_anchor).abs().max() > 1e-4
        target = {"model": e_model_anchor, "base": e_base_anchor}[target_from] if loss == "model" else eps
        want = ((pred("concept") - target) ** 2).mean(dim=(1, 2, 3)).mean()
        grads = torch.autograd.grad(want, ctx.params, allow_unused=True)
        want_norm = torch.sqrt(sum((gr ** 2).sum() for gr in grads if gr is not None))

        row = Ac(ctx).step(0)
        assert row["L_ac"] == pytest.approx(want.item(), rel=1e-5)
        assert row["grad_norm"] == pytest.approx(want_norm.item(), rel=1e-4)  # the target carries no gradient
        assert row["L_p"] == 0 and row["L_r"] == 0 and row["loss"] == pytest.approx(row["L_ac"])


def test_ac_prior_preservation_adds_the_anchor_diffusion_loss(tiny):
    """ac.prior_weight p: loss = L_ac + p L_p, L_p the plain diffusion loss of anchor images under their prompt."""
    from erasecli.methods.ac import Ac

    with _two_row_context(tiny, "ac", "ac.prior_weight=2") as ctx:
        row = Ac(ctx).step(0)
        assert row["L_p"] > 0 and row["loss"] == pytest.approx(row["L_ac"] + 2 * row["L_p"], rel=1e-5)


def test_sa_fisher_ewc_and_loss_by_hand(tiny, tmp_path, monkeypatch):
    """sa: F is the mean squared gradient of each base sample's diffusion loss with respect to the base weights
    (the adapter off); L_ewc = sum F (scale B A)^2, scale B A being peft's own delta weight; the loss is
    L_f + replay_weight L_g + ewc_lambda L_ewc; a second run reads the Fisher from the cache."""
    from erasecli.methods.sa import Sa, delta_weight, lora_layers

    monkeypatch.setenv("ERASECLI_CACHE", str(tmp_path / "cache"))
    with _two_row_context(tiny, "sa", "sa.fisher_samples=2", "sa.ewc_lambda=1e5") as ctx:
        unet, d = ctx.unet, ctx.data
        layers = lora_layers(unet)
        assert len(layers) > 0 and all(n.endswith(("to_k", "to_v")) for n, _ in layers)
        g = torch.Generator("cpu")
        g.set_state(ctx.gen.get_state())
        weights = [m.get_base_layer().weight for _, m in layers]
        want = [torch.zeros_like(w) for w in weights]
        for w in weights:
            w.requires_grad_(True)
        for s in range(2):  # no retain images here: the anchor images are the base's samples
            t = torch.randint(1000, (1,), generator=g)
            eps = torch.randn(1, 4, 8, 8, generator=g)
            abar = tiny.pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = abar.sqrt() * d.anchor[s : s + 1] + (1 - abar).sqrt() * eps
            unet.disable_adapters()
            loss = ((unet(x_t, t, encoder_hidden_states=d.embeds[d.anchor_c[s : s + 1]]).sample - eps) ** 2).mean()
            unet.enable_adapters()
            for acc, gr in zip(want, torch.autograd.grad(loss, weights)):
                acc += gr.pow(2) / 2
        for w in weights:
            w.requires_grad_(False)
        sa = Sa(ctx)
        assert sa.fisher_info["fisher_cached"] is False
        for (n, _), w in zip(layers, want):
            assert torch.allclose(sa.fisher[n], w, rtol=1e-4, atol=1e-12)
        torch.manual_seed(1)
        for p in ctx.params:
            p.data += 0.05 * torch.randn_like(p)
        by_peft = sum((sa.fisher[n] * m.get_delta_weight("default").pow(2)).sum() for n, m in layers)
        assert all(torch.allclose(delta_weight(m), m.get_delta_weight("default")) for _, m in layers)
        assert sa.ewc().item() == pytest.approx(by_peft.item(), rel=1e-5) and by_peft > 0
        row = sa.step(0)
        assert row["L_g"] == 0 and row["L_f"] > 0
        assert row["loss"] == pytest.approx(row["L_f"] + 1e5 * row["L_ewc"], rel=1e-5)
        again = Sa(ctx)
        assert again.fisher_info["fisher_cached"] is True
        assert all(torch.equal(again.fisher[n], sa.fisher[n]) for n, _ in layers)


def test_ant_targets_by_phase_and_saliency_by_hand(tiny):
    """ant (xt_source data): rows past the early share get the reversed direction e_0 - eta (e_c - e_0), early rows
    the base's e_c, weighted by early_weight; with saliency < 1 only the top modules by mean |d L_late / d W| train."""
    from erasecli.methods.ant import Ant

    sets = ("ant.xt_source=data", "ant.negative_guidance=2", "ant.early_share=0.5", "ant.early_weight=0.5",
            "ant.saliency=0.5", "ant.saliency_batches=1")
    with _two_row_context(tiny, "ant", *sets) as ctx:
        unet, d = ctx.unet, ctx.data
        ant = Ant(ctx)
        n_mod = len(ant.saliency)  # every cross-attention k / v module has a score
        assert n_mod >= 4 and len(ant.trained) == round(n_mod / 2)
        top = sorted(ant.saliency, key=lambda n: -ant.saliency[n])[: len(ant.trained)]
        assert sorted(top) == sorted(n for n, _ in ant.trained)
        # one module's score by hand: the same draws (the saliency's own seed), the late-phase loss at the base
        gs = torch.Generator("cpu").manual_seed(int(ctx.recipe.train.seed) + 11)
        i = torch.randint(len(d.forget), (2,), generator=gs)
        t = torch.randint(1000, (2,), generator=gs)
        eps = torch.randn(2, 4, 8, 8, generator=gs)
        abar = tiny.pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * d.forget[i] + (1 - abar).sqrt() * eps
        name, layer = ant.trained[0]
        w = layer.get_base_layer().weight
        with torch.no_grad():
            e_c = unet(x_t, t, encoder_hidden_states=d.embeds[d.forget_c[i]]).sample
            e_0 = unet(x_t, t, encoder_hidden_states=d.embeds[torch.zeros_like(i)]).sample
        w.requires_grad_(True)
        e = unet(x_t, t, encoder_hidden_states=d.embeds[d.forget_c[i]]).sample
        (gw,) = torch.autograd.grad(((e - (e_0 - 2 * (e_c - e_0))) ** 2).mean(), [w])
        w.requires_grad_(False)
        assert ant.saliency[name] == pytest.approx(gw.abs().mean().item(), rel=1e-4)
        trained_ids = {id(p) for _, m in ant.trained for p in m.parameters() if p.requires_grad}
        assert trained_ids and all(id(p) in trained_ids for p in ant.opt.param_groups[0]["params"])
        i, t, x_t = _noisy_forget_draws(tiny, ctx)
        c = d.embeds[d.forget_c[i]]
        with torch.no_grad():
            e_c = unet(x_t, t, encoder_hidden_states=c).sample  # lora_B is zero: the base
            e_0 = unet(x_t, t, encoder_hidden_states=d.embeds[torch.zeros_like(i)]).sample
        late = t < 500
        target = torch.where(late.view(-1, 1, 1, 1), e_0 - 2 * (e_c - e_0), e_c)
        w = torch.where(late, 1.0, 0.5)
        want = (w * ((e_c - target) ** 2).mean(dim=(1, 2, 3))).mean()
        row = ant.step(0)
        assert row["L_ant"] == pytest.approx(want.item(), rel=1e-5)
        assert row["late"] == pytest.approx(late.float().mean().item())


def test_ant_guide_from_anchor_reverses_only_what_the_prompt_adds_to_its_anchor(tiny):
    """ant.guide_from anchor: the late target is e_a - eta (e_c - e_a), e_a the base's prediction under each forget
    prompt's anchor ("a red handwritten digit" for "a red handwritten digit three"), not under the empty prompt."""
    from erasecli.methods.ant import Ant

    sets = ("ant.xt_source=data", "ant.negative_guidance=2", "ant.early_share=0", "ant.saliency=1",
            "ant.guide_from=anchor")
    with _two_row_context(tiny, "ant", *sets) as ctx:
        unet, d = ctx.unet, ctx.data
        ant = Ant(ctx)
        i, t, x_t = _noisy_forget_draws(tiny, ctx)
        with torch.no_grad():
            e_c = unet(x_t, t, encoder_hidden_states=d.embeds[d.forget_c[i]]).sample  # lora_B is zero: the base
            e_a = unet(x_t, t, encoder_hidden_states=d.embeds[d.anchor_c[i]]).sample
            e_0 = unet(x_t, t, encoder_hidden_states=d.embeds[torch.zeros_like(i)]).sample
        want = ((e_c - (e_a - 2 * (e_c - e_a))) ** 2).mean()  # every row late (early_share 0)
        paper = ((e_c - (e_0 - 2 * (e_c - e_0))) ** 2).mean()
        row = ant.step(0)
        assert row["L_ant"] == pytest.approx(want.item(), rel=1e-5)
        assert abs(want.item() - paper.item()) > 1e-3 * paper.item()  # the anchor is not the empty prompt here


def test_recorded_attention_is_the_unets_own(tiny):
    """The recording processor changes no prediction, and what it keeps are each cross-attention's probabilities:
    (B, heads, Q, K), rows summing to 1, one map per attn2 module."""
    from erasecli.diffusion.attention import recording
    from erasecli.diffusion.cond import encode_prompts

    base = tiny
    unet = base.pipe.unet
    g = torch.Generator("cpu").manual_seed(3)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 700])
    with torch.no_grad():
        c = encode_prompts(base.pipe, ["a red handwritten digit three", "a blue digit 5"], "cpu")
        plain = unet(x, t, encoder_hidden_states=c).sample
        with recording(unet) as maps:
            rec = unet(x, t, encoder_hidden_states=c).sample
        after = unet(x, t, encoder_hidden_states=c).sample
    assert torch.allclose(rec, plain, atol=1e-5) and torch.equal(after, plain)  # processors restored
    cross = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    assert sorted(maps) == sorted(cross) and len(cross) >= 2
    for p in maps.values():
        assert p.shape[0] == 2 and p.shape[-1] == c.shape[1]
        assert torch.allclose(p.sum(-1), torch.ones(p.shape[:-1]), atol=1e-5)


def test_concept_tokens_mark_the_concepts_words(tiny):
    from erasecli.concepts import tiny_concept
    from erasecli.methods.receler import concept_tokens

    tok = tiny.pipe.tokenizer
    prompts = ["a red handwritten digit three", "the number 3 in red", "a red handwritten digit"]
    m = concept_tokens(tok, prompts, tiny_concept("digit 3", "digit"))
    words = [tok.convert_ids_to_tokens(tok(p).input_ids) for p in prompts]
    assert [words[0][i] for i in m[0].nonzero().flatten()] == ["three</w>"]
    assert [words[1][i] for i in m[1].nonzero().flatten()] == ["3</w>"]
    assert not m[2].any()  # the anchor does not name the concept


def test_receler_masks_and_penalty_by_hand():
    """M_l: attention to the concept's tokens, heads averaged, over its maximum, above the threshold; L_reg: the
    eraser's mean squared output per unmasked query, averaged over layers."""
    from erasecli.methods.receler import concept_masks, localized_penalty

    probs = torch.zeros(1, 2, 4, 3)  # (B, heads, Q, K); token 1 is the concept's
    probs[0, 0, :, 1] = torch.tensor([0.8, 0.4, 0.1, 0.0])
    probs[0, 1, :, 1] = torch.tensor([0.4, 0.4, 0.1, 0.2])  # heads' mean: 0.6, 0.4, 0.1, 0.1 -> /0.6
    tokens = torch.tensor([[False, True, False]])
    M = concept_masks({"l": probs}, tokens, 0.5)["l"]
    assert M.tolist() == [[1.0, 1.0, 0.0, 0.0]]  # 1, 0.667 above; 0.167 below
    E = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [3.0, 1.0], [0.0, 2.0]]])  # (B, Q, D)
    # unmasked queries 2 and 3: mean_d E^2 = 5 and 2, over 2 queries = 3.5; a second layer with no mask: 1.5 + 2 ...
    assert localized_penalty({"l": E}, {"l": M}, 1).item() == pytest.approx(3.5)
    E2 = torch.ones(1, 4, 2) * 2.0  # 4 everywhere, no mask: 4
    both = localized_penalty({"l": E, "m": E2}, {"l": M, "m": torch.zeros(1, 4)}, 1)
    assert both.item() == pytest.approx((3.5 + 4.0) / 2)


def test_receler_step_by_hand(tiny):
    """receler (xt_source data, anchor empty): L_erase = ||eps(x_t, c) - (e_0 - eta (e_c - e_0))||^2 and L_reg the
    eraser's output outside the base's concept mask, each computed here from the same draws; the eraser is the
    LoRA on every attn2.to_out.0."""
    from erasecli.diffusion.attention import recording
    from erasecli.methods.adapter import base_only
    from erasecli.methods.receler import Receler, concept_masks, concept_tokens, eraser_layers

    sets = ("receler.xt_source=data", "receler.negative_guidance=2", "receler.reg_weight=10",
            "receler.mask_threshold=0.3")
    with _two_row_context(tiny, "receler", *sets, targets=("attn2.to_out.0",)) as ctx:
        unet, d = ctx.unet, ctx.data
        torch.manual_seed(1)
        for p in ctx.params:  # the eraser off zero, so its output and the regulariser are not 0
            p.data += 0.05 * torch.randn_like(p)
        layers = eraser_layers(unet)
        assert len(layers) == len([n for n, _ in unet.named_modules() if n.endswith("attn2")])
        i, t, x_t = _noisy_forget_draws(tiny, ctx)
        c, e_rows = d.embeds[d.forget_c[i]], d.embeds[torch.zeros(2, dtype=torch.long)]
        with torch.no_grad(), base_only(unet):
            with recording(unet) as maps:
                e_c = unet(x_t, t, encoder_hidden_states=c).sample
            e_0 = unet(x_t, t, encoder_hidden_states=e_rows).sample
        tokens = concept_tokens(tiny.pipe.tokenizer, d.prompts, d.sets)[d.forget_c[i]]  # "three"
        masks = concept_masks(dict(maps), tokens, 0.3)
        ins = {}
        hooks = [layer.register_forward_pre_hook(lambda m, a, n=n: ins.__setitem__(n, a[0])) for n, layer in layers]
        with torch.no_grad():
            e = unet(x_t, t, encoder_hidden_states=c).sample
        for h in hooks:
            h.remove()
        L_erase = ((e - (e_0 - 2 * (e_c - e_0))) ** 2).mean(dim=(1, 2, 3)).mean()
        regs = []
        for n, layer in layers:  # E_l = scale B A h on the attention's output before its projection
            E = layer.lora_B["default"](layer.lora_A["default"](ins[n])) * layer.scaling["default"]
            off = 1 - masks[n]
            regs.append(((E ** 2).mean(-1) * off).sum() / (off.sum() + 1e-9))  # a layer masked whole adds 0
        L_reg = torch.stack(regs).mean()
        assert 0 < float(sum(m.mean() for m in masks.values())) / len(masks) < 1  # a real mask, not all or none

        row = Receler(ctx).step(0)
        assert row["L_erase"] == pytest.approx(L_erase.item(), rel=1e-4)
        assert row["L_reg"] == pytest.approx(L_reg.item(), rel=1e-4) and row["L_reg"] > 0
        assert row["loss"] == pytest.approx(L_erase.item() + 10 * L_reg.item(), rel=1e-4)


def test_receler_puts_its_eraser_on_the_attention_output_and_refuses_another_place():
    from erasecli.errors import RecipeError
    from erasecli.methods.receler import Receler

    r = load_recipe(None, ["method=receler", "concept.name=digit 3", "defaults=paper"])
    assert Receler.resolve(r).lora.target_modules == ("attn2.to_out.0",)
    with pytest.raises(RecipeError, match="lora.target_modules"):
        Receler.resolve(load_recipe(None, ["method=receler", "lora.target_modules=[attn2.to_k]"]))


def test_mace_attention_loss_masks_and_fusion_by_hand():
    from erasecli.methods.mace import at_layer, attention_loss, fuse, pixel_masks
    from PIL import Image
    import numpy as np

    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[0, 0] = (200, 0, 0)  # a red pixel, drawn
    arr[0, 1] = (50, 50, 50)  # dim: below 0.3 x 255
    arr[3, 3] = (0, 0, 255)
    mask = pixel_masks([Image.fromarray(arr)], 0.3)
    assert mask.shape == (1, 1, 4, 4) and mask.sum() == 2
    assert at_layer(mask, 4).tolist() == [[0.25, 0.0, 0.0, 0.25]]  # each 2x2 patch's covered share

    probs = torch.zeros(1, 2, 4, 3)
    probs[0, 0, :, 1] = torch.tensor([0.5, 0.2, 0.0, 0.1])
    probs[0, 1, :, 1] = torch.tensor([0.3, 0.2, 0.4, 0.1])  # heads' mean 0.4, 0.2, 0.2, 0.1
    probs[0, :, :, 2] = 0.9  # not the concept's token: never counted
    soft = torch.tensor([[1.0, 0.5, 0.0, 0.25]])
    want = 1.0 * 0.16 + 0.5 * 0.04 + 0.0 + 0.25 * 0.01
    got = attention_loss({"l": probs}, torch.tensor([[False, True, False]]), lambda name, Q: soft)
    assert got.item() == pytest.approx(want)

    g = torch.Generator().manual_seed(0)
    W1 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    dW = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    E = [torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(2)]  # two states per concept
    Ep = torch.randn(4, 1, generator=g, dtype=torch.float64)
    Cs, Cp = [e @ e.T for e in E], Ep @ Ep.T
    D = fuse(W1, dW, Cs, Cp, 2.0, 0.1)
    # the normal equations of min sum_i ||W* E_i - (W1 + dW_i) E_i||^2 + 2 ||(W* - W1) Ep||^2 + 0.1 ||W* - W1||^2
    lhs = D @ (Cs[0] + Cs[1] + 2.0 * Cp + 0.1 * torch.eye(4, dtype=torch.float64))
    assert torch.allclose(lhs, dW[0] @ Cs[0] + dW[1] @ Cs[1], atol=1e-10)
    one = fuse(W1, dW[:1], Cs[:1], torch.zeros(4, 4, dtype=torch.float64), 0.0, 1e-9)
    assert torch.allclose(one @ E[0], dW[0] @ E[0], atol=1e-6)  # one concept, no preservation: its LoRA exactly


def test_mace_erases_two_concepts_into_one_delta_with_a_lora_each(tiny, tmp_path):
    """MACE's point: several concepts, one LoRA each, fused into one delta that delta.json names them in."""
    import json

    from erasecli import api

    r = api.load_recipe(None, ["train.steps=3", "mace.images=1"], method="mace",
                        concept={"name": "digit 3", "also": ["digit 5"]})
    out = tmp_path / "mace"
    result = api.unlearn(r, out=out, base=tiny)
    summary = json.loads((out / "train_summary.json").read_text())
    assert [row["concept"] for row in summary["loras"]] == ["digit 3", "digit 5"]
    assert result["delta"]["concepts"] == ["digit 3", "digit 5"]
    assert summary["factor_rel_error"] < 1e-6  # the written LoRA is the solved change, to float precision


def test_mace_pixel_masks_need_the_tiny_world():
    from erasecli.errors import RecipeError
    from erasecli.methods.mace import Mace

    with pytest.raises(RecipeError, match="mace.mask"):
        Mace.check(load_recipe(None, ["method=mace", "base=sd-1.4", "mace.mask=pixels", "concept.name=van gogh"]))
    Mace.check(load_recipe(None, ["method=mace", "mace.mask=pixels", "concept.name=digit 3"]))  # the tiny world: fine
