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
