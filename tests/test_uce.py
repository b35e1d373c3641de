"""`erase unlearn --method uce|rece`: the closed-form edit as an exact LoRA, several concepts in one delta,
shards of a concepts file, and SIGTERM stopping a run like Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from erasecli import api, batch
from erasecli.concepts import concept_for, recipe_concept, tiny_concept
from erasecli.errors import RecipeError, UsageError
from erasecli.methods.uce import edited_modules, erase_pairs, plan
from test_sample_cli import erase, one_line_error


def recipe(method="uce", *sets, concept="digit 3", also=()):
    return api.load_recipe(None, list(sets), method=method, concept={"name": concept, "also": list(also)})


def _by_formula(W0, C_e, V_e, C_p, lam, s_e, s_p):
    """The issue's formula, as written: W = (lam W0 + s_e sum v c^T + s_p sum W0 c_j c_j^T) M^-1."""
    eye = torch.eye(W0.shape[1], dtype=W0.dtype)
    left = lam * W0 + s_e * V_e.T @ C_e + s_p * W0 @ C_p.T @ C_p
    M = lam * eye + s_e * C_e.T @ C_e + s_p * C_p.T @ C_p
    return left @ torch.linalg.inv(M)


def test_uce_delta_loads_in_plain_diffusers_and_reproduces_the_edited_weights(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    from erasecli.models.registry import TINY_DIR

    r = recipe("uce", "uce.preserve_scale=0.5", "uce.lam=0.7")
    res = api.unlearn(r, out=tmp_path / "uce", base=tiny)
    s = res["summary"]
    assert s["steps"] == 0 and s["rank"] >= 1 and s["modules"] == 14  # every attn2 to_k / to_v of the tiny UNet
    assert res["delta"]["concepts"] == ["digit 3"] and res["delta"]["method"] == "uce"
    concept = concept_for(r, "digits")
    C_e, G_e, C_p, _ = plan(r, tiny, concept)
    assert r.uce.erase_scale == 3.0 and r.defaults == "tiny-digit-uce"  # the shipped tiny preset's
    expected = {n: _by_formula(m.weight.detach().double(), C_e, G_e @ m.weight.detach().double().T, C_p, 0.7, 3.0, 0.5)
                for n, m in edited_modules(tiny.pipe.unet, ("to_k", "to_v")).items()}
    pipe = StableDiffusionPipeline.from_pretrained(str(TINY_DIR), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path / "uce"))  # no erasecli code from here on
    pipe.fuse_lora()
    fused = dict(pipe.unet.named_modules())
    for n, W in expected.items():
        got = fused[n].weight.detach().double()
        assert (got - W).abs().max() <= 1e-5 * W.abs().max(), n
    others = [k for k, v in pipe.unet.state_dict().items() if "attn2.to_k" not in k and "attn2.to_v" not in k]
    base_sd = StableDiffusionPipeline.from_pretrained(str(TINY_DIR), safety_checker=None,
                                                      requires_safety_checker=False).unet.state_dict()
    assert all(torch.equal(pipe.unet.state_dict()[k], base_sd[k]) for k in others)  # nothing else moved


def test_sampling_with_a_uce_delta_equals_the_directly_edited_model(tiny, tmp_path):
    r = recipe("uce")
    api.unlearn(r, out=tmp_path / "uce", base=tiny)
    prompts = ["a red handwritten digit three", "a blue handwritten digit five"]
    s = api.load_recipe(None, ["sample.steps=10"])
    with_delta = api.sample(s, prompts=prompts, n=3, deltas=[str(tmp_path / "uce")], base=tiny)
    C_e, G_e, C_p, _ = plan(r, tiny, concept_for(r, "digits"))
    mods = edited_modules(tiny.pipe.unet, ("to_k", "to_v"))
    saved = {n: m.weight.detach().clone() for n, m in mods.items()}
    try:
        for n, m in mods.items():
            W0 = saved[n].double()
            u = r.uce
            m.weight.data = _by_formula(W0, C_e, G_e @ W0.T, C_p, u.lam, u.erase_scale, u.preserve_scale).float()
        edited = api.sample(s, prompts=prompts, n=3, base=tiny)
    finally:
        for n, m in mods.items():
            m.weight.data = saved[n]
    plain = api.sample(s, prompts=prompts, n=3, base=tiny)
    for a, b, c in zip(with_delta, edited, plain):
        x, y, z = (np.asarray(v.image, dtype=np.int16) for v in (a, b, c))
        assert np.abs(x - y).max() <= 2  # the same images up to float rounding of W0 x + B A x against W x
        assert np.abs(x - z).mean() > 2 * max(np.abs(x - y).mean(), 0.05)  # and unlike the base's


def test_uce_aligns_forget_tokens_with_their_guide(tiny):
    C_e, G_e, rows = erase_pairs(tiny, ["a red handwritten digit three"], ["a red handwritten digit"], "padding")
    # "<bos> a red handwritten digit" are shared: the edit starts at "three" and runs through the padding
    L = tiny.pipe.tokenizer.model_max_length
    assert C_e.shape == G_e.shape == (L - 5, C_e.shape[1])
    C_c, _, _ = erase_pairs(tiny, ["a red handwritten digit three"], ["a red handwritten digit"], "concept")
    assert len(C_c) == 2 and torch.allclose(C_c, C_e[:2])  # "three" and the end-of-text token
    assert rows.tolist() == [True, True] + [False] * (len(C_e) - 2)  # the rows rece re-derives
    with pytest.raises(RecipeError, match="nothing to erase"):
        erase_pairs(tiny, ["a digit"], ["a digit"], "padding")


def test_concepts_erased_together_share_one_concept_model():
    c = tiny_concept(["digit 3", "five"])
    assert c.names == ("digit 3", "five") and c.targets == (3, 5) and c.together
    assert not any("three" in p or "five" in p for p in c.retain) and len(c.retain) == 5 * 8
    forget_digits = {p.labels["digit"] for p in c.prompts if p.group == "forget"}
    assert forget_digits == {3, 5}
    with pytest.raises(RecipeError, match="one kind"):
        tiny_concept(["digit 3", "red"])
    with pytest.raises(RecipeError, match="same digit twice"):
        tiny_concept(["digit 3", "three"])
    r = recipe_concept(["van gogh", "monet"], ["a painting by {concept}"], "", ["a painting by monet", "a cat"],
                       ["monet", "picasso"], [], "")
    assert r.label_names["concept"] == ("van gogh", "monet", "picasso")
    assert [p.labels["concept"] for p in r.prompts if p.group == "forget"] == [0, 1]
    assert r.retain == ("a cat", "a painting by picasso")  # retain minus every erased concept


@pytest.mark.slow
def test_uce_erases_three_digits_together_and_keeps_the_rest(tiny, tmp_path):
    """Both guides in one evaluation: the anchor (default) and swap:zero. The anchor 'a red handwritten digit'
    draws 7s and 8s itself (22 % and 19 % of the base's anchor images), which caps UA; a swapped-in kept digit
    does not (docs/results.md, several concepts)."""
    r = recipe("uce", concept="digit 3", also=["digit 5", "digit 7"])
    res = api.unlearn(r, out=tmp_path / "three", base=tiny)
    assert res["delta"]["concepts"] == ["digit 3", "digit 5", "digit 7"]
    assert res["delta"]["concept"] == "digit 3 + digit 5 + digit 7"
    api.unlearn(recipe("uce", "uce.guide=swap:zero", concept="digit 3", also=["digit 5", "digit 7"]),
                out=tmp_path / "swap", base=tiny)
    e = api.load_recipe(None, ["eval.samples_per_prompt=2", "eval.metrics=[ua,ira,cra]"],  # UA 1.0 at 2 and 4
                        concept={"name": "digit 3", "also": ["digit 5", "digit 7"]})
    rep = api.evaluate(e, deltas=[str(tmp_path / "three"), str(tmp_path / "swap")], base=tiny)
    assert rep["concepts"] == ["digit 3", "digit 5", "digit 7"]
    row, swap = rep["models"][1], rep["models"][2]
    assert set(row["ua_by_concept"]) == {"digit 3", "digit 5", "digit 7"}
    assert min(row["ua_by_concept"].values()) >= 0.85 and rep["models"][0]["ua_by_concept"]["digit 5"] <= 0.15
    assert row["metrics"]["ira"] >= 0.85 and row["metrics"]["cra"] >= 0.85
    assert min(swap["ua_by_concept"].values()) >= 0.95, swap["ua_by_concept"]
    assert swap["metrics"]["ira"] >= 0.9 and swap["metrics"]["cra"] >= 0.9, swap["metrics"]


def test_a_method_that_erases_one_concept_refuses_several(monkeypatch):
    from erasecli.methods import METHODS

    r = recipe("critic-rl", concept="digit 3", also=["digit 5"])
    api.check_unlearn(r, out=Path("/tmp/never"))  # every shipped method erases several together
    monkeypatch.setattr(METHODS["critic-rl"], "supports_together", False)  # the flag a new method would set
    with pytest.raises(UsageError, match="one concept per delta"):
        api.check_unlearn(r, out=Path("/tmp/never"))


def test_shards_split_a_concepts_file_with_no_overlap():
    concepts = [f"c{i}" for i in range(10)]
    shards = [batch.shard_concepts(concepts, i, 3) for i in range(3)]
    assert shards[0] == ["c0", "c3", "c6", "c9"] and sorted(sum(shards, [])) == sorted(concepts)
    assert batch.batch_summary_name((1, 3)) == "batch-1-of-3.json" and batch.batch_summary_name() == "batch.json"


def test_unlearn_cli_repeated_concepts_together_and_shards(tmp_path):
    f = tmp_path / "digits.txt"
    f.write_text("digit 3\ndigit 5\n# a comment\ndigit 7\n")
    p = erase("unlearn", "--method", "uce", "--concepts-file", str(f), "--shard", "1/2", "--out",
              str(tmp_path / "shard"), "--json")
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in (tmp_path / "shard").iterdir()) == ["batch-1-of-2.json", "digit-5"]
    p = erase("unlearn", "--method", "uce", "--concepts-file", str(f), "--together", "--out", str(tmp_path / "all"),
              "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "all" / "delta.json").read_text())
    assert info["concepts"] == ["digit 3", "digit 5", "digit 7"] and info["method"] == "uce"
    p = erase("unlearn", "--method", "uce", "--concept", "digit 3", "--concept", "digit 5", "--out", str(tmp_path / "z"))
    assert p.returncode == 0 and "closed-form edit in" in p.stderr, p.stderr
    assert 'erase evaluate --concept "digit 3" --concept "digit 5"' in " ".join(p.stderr.split())  # a hint that runs
    p = erase("unlearn", "--method", "uce", "--concept", "digit 3", "--concept", "red", "--out", str(tmp_path / "x"))
    assert "one kind" in one_line_error(p, 1) and not (tmp_path / "x").exists()
    for args, words in ((["--shard", "2/2"], "counts from 0"), (["--shard", "a/b"], "not I/N"),
                        (["--together", "--shard", "0/2"], "cannot be split")):
        p = erase("unlearn", "--method", "uce", "--concepts-file", str(f), *args, "--out", str(tmp_path / "y"))
        assert words in one_line_error(p, 2)
    p = erase("unlearn", "--method", "uce", "--concept", "digit 3", "--shard", "0/2", "--out", str(tmp_path / "y"))
    assert "--concepts-file" in one_line_error(p, 2)


def _wait_for(path: Path, proc, seconds=240):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t0 > seconds:
            proc.kill()
            raise AssertionError(f"{path} never appeared: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [False, True])
def test_sigterm_checkpoints_and_exits_with_the_resume_hint(tmp_path, batch):
    """What a scheduler does before preempting a job: SIGTERM, then (after a grace period) SIGKILL."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ERASE_DEBUG", None)
    args = ["unlearn", "--method", "siss", "--steps", "400", "--set", "train.checkpoint_every=2",
            "--set", "data.images_per_prompt=2", "--set", "data.retain_images_per_prompt=1"]
    if batch:
        f = tmp_path / "c.txt"
        f.write_text("digit 3\ndigit 5\n")
        args += ["--concepts-file", str(f), "--out", str(tmp_path / "b")]
        ckpt = tmp_path / "b" / "digit-3.ckpt"
    else:
        args += ["--concept", "digit 3", "--out", str(tmp_path / "d")]
        ckpt = tmp_path / "d.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "erasecli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(ckpt / "state.pt", proc)  # training is under way: the first periodic checkpoint is written
    first = torch.load(ckpt / "state.pt", weights_only=False)["step"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM" in err and f"--resume {ckpt}" in err and "Traceback" not in err
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert first <= state["step"] < 400  # saved at the step it was stopped at, not only at the last period
    if batch:
        assert not (tmp_path / "b" / "digit-5").exists()


@pytest.mark.slow
def test_training_methods_erase_several_concepts_into_one_delta(tiny, tmp_path):
    from erasecli.data import build_train_data

    r = recipe("siss", "train.steps=2", "data.images_per_prompt=2", "data.retain_images_per_prompt=1",
               concept="digit 3", also=["digit 5"])
    data = build_train_data(r, tiny)
    assert len(data.sets.forget) == 2 * len(tiny_concept("digit 3").forget)  # the union of both forget sets
    assert not any("three" in p or "five" in p for p in data.sets.retain)
    res = api.unlearn(r, out=tmp_path / "two", base=tiny)
    info = json.loads((tmp_path / "two" / "delta.json").read_text())
    assert info["concepts"] == ["digit 3", "digit 5"] and res["delta"]["concept"] == "digit 3 + digit 5"
    from erasecli.delta import read_delta_info

    assert read_delta_info(tmp_path / "two").concepts == ("digit 3", "digit 5")  # the safetensors header too


# ---------------------------------------------------------------------------------------------------
# Robust closed form: attack-and-re-solve rounds (uce.robust) and the projected range (uce.robust_project).


@pytest.mark.slow
def test_robust_rounds_add_found_states_and_leave_the_base_untouched(tiny, tmp_path):
    before = {n: m.weight.detach().clone() for n, m in edited_modules(tiny.pipe.unet, ("to_k", "to_v")).items()}
    r = recipe("uce", "uce.robust=both", "uce.robust_rounds=2", "uce.robust_steps=3", "uce.robust_images=1")
    res = api.unlearn(r, out=tmp_path / "rob", base=tiny)
    rounds = res["summary"]["robust_rounds"]
    plain_states = res["summary"]["erased_states"]
    assert [x["round"] for x in rounds] == [1, 2] and all({"inversion", "prefix"} <= set(x) for x in rounds)
    assert plain_states < rounds[0]["erased"] < rounds[1]["erased"]  # each round's found states join the set
    for n, m in edited_modules(tiny.pipe.unet, ("to_k", "to_v")).items():  # the edit was applied in place, undone
        assert torch.equal(m.weight, before[n]), n
    assert json.loads((tmp_path / "rob" / "delta.json").read_text())["method"] == "uce"
    with pytest.raises(RecipeError, match="one token for one concept"):
        api.unlearn(recipe("uce", "uce.robust=inversion", concept="digit 3", also=["digit 7"]),
                    out=tmp_path / "two", base=tiny)


@pytest.mark.slow
def test_projected_range_stops_concept_inversion(tiny, tmp_path):
    """Measured (docs/results.md, "Closed form under attack"): concept inversion brings the 3 back on every forget
    prompt of plain uce at three attack seeds (ASR 1.0), and on none with uce.robust_project=2 (ASR 0.0)."""
    from erasecli.attacks.run import attack_model

    r = recipe("uce", "uce.robust_project=2")  # the protocol's 4 samples per prompt
    api.unlearn(r, out=tmp_path / "project", base=tiny)
    out = attack_model(r, tiny, tiny_concept("digit 3"), [str(tmp_path / "project")], ["inversion"])
    assert out["pre_asr"] <= 0.1 and out["outcomes"]["inversion"].asr <= 0.2, out["outcomes"]["inversion"].summary()


def test_rank_option_writes_the_best_low_rank_approximation_and_reports_its_error(tiny, tmp_path):
    from safetensors.torch import load_file

    exact = api.unlearn(recipe("uce"), out=tmp_path / "exact", base=tiny)
    res = api.unlearn(recipe("uce", "uce.rank=4"), out=tmp_path / "r4", base=tiny)
    s, trunc = res["summary"], res["summary"]["truncation"]
    assert s["rank"] == 4 and exact["summary"]["rank"] > 4 and "truncation" not in exact["summary"]
    assert set(trunc["relative_error"]) == set(edited_modules(tiny.pipe.unet, ("to_k", "to_v")))
    assert 0 < trunc["max_relative_error"] < 1
    meta = json.loads((tmp_path / "r4" / "delta.json").read_text())
    assert json.dumps(meta).count("max_relative_error") == 1  # stored with the delta
    full, low = load_file(str(tmp_path / "exact" / "pytorch_lora_weights.safetensors")), \
        load_file(str(tmp_path / "r4" / "pytorch_lora_weights.safetensors"))
    downs = [k for k in low if "lora.down" in k]
    assert downs and all(low[k].shape[0] == 4 for k in downs)
    for k in downs[:3]:  # Eckart-Young: the rank-4 delta is the exact one's SVD truncated, error as reported
        D = full[k.replace("lora.down", "lora.up")].double() @ full[k].double()
        D4 = low[k.replace("lora.down", "lora.up")].double() @ low[k].double()
        U, S, Vh = torch.linalg.svd(D)
        best = (U[:, :4] * S[:4]) @ Vh[:4]
        assert (D4 - best).abs().max() <= 1e-4 * D.abs().max(), k
        rel = float((D - D4).norm() / D.norm())
        assert any(abs(rel - e) < 1e-3 for e in trunc["relative_error"].values()), k
    p = erase("unlearn", "--method", "uce", "--concept", "digit 3", "--set", "uce.rank=4", "--out", str(tmp_path / "cli"))
    assert p.returncode == 0 and "rank 4 (truncated: max relative error" in " ".join(p.stderr.split()), p.stderr


def test_swap_guide_replaces_every_erased_concepts_words_and_keeps_the_rest_of_the_prompt():
    from erasecli.methods.uce import guides_of

    r = recipe("uce", "uce.guide=swap:zero", concept="digit 3", also=["digit 7"])
    c = concept_for(r, "digits")
    guides = guides_of(r.uce, c)
    assert len(guides) == len(c.forget)
    for p, g in zip(c.forget, guides):
        assert not any(w in g.split() for w in ("three", "3", "seven", "7")), (p, g)
        assert g.split() == ["zero" if w in ("three", "3", "seven", "7") else w for w in p.split()], (p, g)
