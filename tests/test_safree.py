"""safree (SAFREE): the token filter against a hand-computed case, the step window, and the commands a user
runs (`erase unlearn --method safree`, then `--guard` on sample and attack)."""

import math

import numpy as np
import pytest
import torch

from erasecli.diffusion import guard as G
from erasecli.diffusion import safree as F

S = F.SafreeSettings(alpha=0.01, svf=True, svf_steps=10, svf_midpoint=5.333, svf_sharpness=2.5)


def test_the_filter_projects_the_trigger_token_by_hand():
    """D = 3, concept subspace span(e1). Masking token 1 leaves (0, 1, 0), 1 away from the subspace; masking token
    2 leaves (1, .1, 0), 0.1 away. Token 1 is the trigger (1 >= 1.01 x 0.1), token 2 not (0.1 < 1.01 x 1).
    P_M = diag(1, 1, 0), so the trigger's state e becomes (I - P_C) P_M e = (0, e_2, 0)."""
    P_C = F.projection(torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(P_C, torch.diag(torch.tensor([1.0, 0.0, 0.0])), atol=1e-6)
    masked = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.1, 0.0]])
    states = torch.tensor([[1.0, 1.0, 1.0], [2.0, 3.0, 4.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [5.0, 5.0, 5.0]])
    filtered, trigger, beta, t_last = F.plan(states, masked, P_C, S)
    assert trigger.tolist() == [True, False]
    want = states.clone()
    want[1] = torch.tensor([0.0, 3.0, 0.0])
    assert torch.allclose(filtered, want)
    # beta: 1 - mean cos(e, (0, e_2, 0)) over BOS, the two tokens and EOS (rows 0-3; row 4 is padding)
    cos = [1 / math.sqrt(3), 3 / math.sqrt(29), 1 / math.sqrt(2), 0.0]
    assert beta == pytest.approx(1 - sum(cos) / 4, abs=1e-5)
    assert t_last == round(10 / (1 + math.exp(-5.0 * (10 * beta - 5.333))))
    # [ours] positions "after": the later states (rows 2-4) lose the subspace too; row 1 as before
    after, *_ = F.plan(states, masked, P_C, F.SafreeSettings(**{**S.__dict__, "positions": "after"}))
    assert torch.allclose(after[:2], want[:2]) and torch.allclose(after[2:], states[2:] * torch.tensor([0.0, 1, 1]))


def test_the_step_window_and_no_svf():
    g = F.SafreeGuard(torch.eye(3)[:1], S)
    assert g.in_window(999, 10) and g.in_window(780, 10) and not g.in_window(760, 10)
    assert g.in_window(981, 0) and not g.in_window(961, 0)  # t' = 0: the first of 50 steps only
    assert F.svf_steps(0.9, F.SafreeSettings(**{**S.__dict__, "svf": False})) == F.PAPER_STEPS


def test_unlearn_safree_writes_a_guard_that_filters_the_concepts_prompts(tiny, tmp_path):
    from erasecli import api
    from erasecli.delta import apply_deltas, read_delta_info, remove_deltas
    from erasecli.diffusion.cond import encode_prompts

    r = api.load_recipe(None, [], method="safree", concept={"name": "digit 3"})
    assert r.defaults == "tiny-digit-safree" and r.safree.positions == "triggers"
    out = tmp_path / "g"
    api.unlearn(r, out=out, base=tiny)
    info = read_delta_info(out)
    assert info.kind == "guard" and info.method == "safree"
    assert info.guard["keywords"] == ["three", "digit three", "a handwritten digit three"]
    apply_deltas(tiny, [str(out)])
    try:
        guard = G.guard_of(tiny.pipe.unet)
        c = encode_prompts(tiny.pipe, ["a handwritten digit three"], tiny.device)
        assert guard.log[-1][1] == [4]  # "three", after BOS and three words, is the trigger
        swapped = guard.swap(c, 961)
        assert not torch.equal(swapped, c) and torch.equal(swapped[0, :4], c[0, :4])  # only the trigger's state
        assert torch.equal(guard.swap(c, 1), c)  # past the window: the prompt as it was
    finally:
        remove_deltas(tiny)
    assert G.guard_of(tiny.pipe.unet) is None and "forward" not in tiny.pipe.text_encoder.__dict__
    rs = api.load_recipe(None, [])
    prompts = ["a red handwritten digit three"]
    guarded = api.sample(rs, prompts=prompts, n=2, guards=[str(out)], base=tiny)
    plain = api.sample(rs, prompts=prompts, n=2, base=tiny)
    assert not np.array_equal(np.stack([np.asarray(x.image) for x in guarded]),
                              np.stack([np.asarray(x.image) for x in plain]))


def test_the_attacks_differentiate_through_the_filter(tiny, tmp_path):
    """A prompt encoded with gradients (as the attacks encode theirs) reaches the UNet filtered, and the
    gradient flows back to the text encoder's input embeddings through the filter."""
    from erasecli import api
    from erasecli.delta import apply_deltas, remove_deltas
    from erasecli.diffusion.cond import encode_ids, unet_eps

    r = api.load_recipe(None, ["safree.svf=false"], method="safree", concept={"name": "digit 3"})
    out = tmp_path / "g"
    api.unlearn(r, out=out, base=tiny)
    pipe = tiny.pipe
    ids = pipe.tokenizer(["a handwritten digit three"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    grads = {}
    emb = pipe.text_encoder.get_input_embeddings()

    def keep(module, args, out):  # as the attacks do: a leaf of soft-token offsets on the input embeddings
        leaf = torch.zeros_like(out, requires_grad=True)
        grads.setdefault("x", []).append(leaf)
        return out + leaf

    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        plain = unet_eps(pipe.unet, x, t, encode_ids(pipe, ids))
    apply_deltas(tiny, [str(out)])
    h = emb.register_forward_hook(keep)
    try:
        eps = unet_eps(pipe.unet, x, t, encode_ids(pipe, ids))
        kept = [f for f, _ in G.guard_of(pipe.unet).filtered.values()]
        eps.pow(2).sum().backward()
    finally:
        h.remove()
        remove_deltas(tiny)
        pipe.text_encoder.zero_grad(set_to_none=True)
        pipe.unet.zero_grad(set_to_none=True)
    assert not torch.allclose(eps.detach(), plain, atol=1e-4)  # filtered
    assert len(kept) == 1 and kept[0].grad_fn is not None  # the filtered states are part of the graph
    first = grads["x"][0]  # the prompt's own encoding (the masked ones come after)
    assert first.grad is not None and first.grad[0, 4].abs().sum() > 0
