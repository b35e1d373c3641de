"""The comparison study's methods (docs/methods.md): each one's loss checked against the same quantity computed
here by hand on a two-row case with the real tiny UNet, from the same random draws."""

from contextlib import contextmanager

import pytest
import torch

from erasecli.recipes import load_recipe


@contextmanager
def _two_row_context(tiny, method, *sets):
    """A Context on two forget / anchor rows of random latents ("a red handwritten digit three" and its anchor),
    batch 2, no retain images, with a fresh LoRA on the cross-attention k / v that is taken off on the way out."""
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
                     anchor_c=torch.tensor([2, 2]), retain=torch.zeros(0, 4, 8, 8),
                     retain_c=torch.zeros(0, dtype=torch.long))
    with attached(tiny, rank=4, alpha=4.0, targets=["attn2.to_k", "attn2.to_v"], seed=0) as adapter:
        yield Context(recipe=r, base=tiny, unet=adapter.denoiser, adapter=adapter, data=data,
                      gen=torch.Generator("cpu").manual_seed(0), noise=schedule_of(tiny.pipe.scheduler),
                      device=tiny.device)


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
        g = torch.Generator("cpu")
        g.set_state(ctx.gen.get_state())
        i = torch.randint(len(d.forget), (2,), generator=g)
        t = torch.randint(1000, (2,), generator=g)
        eps = torch.randn(2, 4, 8, 8, generator=g)
        abar = tiny.pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * d.forget[i] + (1 - abar).sqrt() * eps
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
