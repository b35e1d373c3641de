"""critic-rl and train-critic: advantages by hand, rewards, the CLI end to end, resume, and bad input."""

import json
from pathlib import Path

import pytest
import torch

from erasecli.methods.critic_rl import gae_over_steps, normalise_per_prompt
from erasecli.recipes import REWARD_NAMES, load_recipe
from erasecli.rewards import REWARDS
from test_sample_cli import erase, one_line_error

# A critic and an RL run small enough for the test suite (seconds each).
SHORT = ["defaults=paper", "critic.steps=4", "critic.train_trajectories=16", "critic.train_epochs=3", "critic.width=16",
         "critic.blocks=2", "critic.prompts_per_step=2", "critic.samples_per_prompt=2"]


def test_gae_over_denoising_steps_by_hand():
    # V = [0.1, 0.3], R = 1.0  ->  V_next = [0.3, 1.0], delta = [0.2, 0.7]
    V, R = torch.tensor([[0.1, 0.3]]), torch.tensor([1.0])
    # lambda 0.5: A_1 = 0.7, A_0 = 0.2 + 0.5 * 0.7 = 0.55
    assert torch.allclose(gae_over_steps(V, R, 0.5), torch.tensor([[0.55, 0.7]]))
    # lambda 1: the Monte-Carlo baseline R - V_k = [0.9, 0.7]
    assert torch.allclose(gae_over_steps(V, R, 1.0), torch.tensor([[0.9, 0.7]]))
    # lambda 0: the one-step TD residuals
    assert torch.allclose(gae_over_steps(V, R, 0.0), torch.tensor([[0.2, 0.7]]))


def test_advantages_are_normalised_within_each_prompt():
    A = torch.tensor([[1.0, 3.0], [5.0, 7.0], [10.0, 10.0], [20.0, 20.0]])
    out = normalise_per_prompt(A, ["a", "a", "b", "b"])
    # prompt a: values 1, 3, 5, 7 -> mean 4, std sqrt(5) = 2.236068
    assert torch.allclose(out[:2], (A[:2] - 4) / 5 ** 0.5, atol=1e-6)
    # prompt b: 10, 10, 20, 20 -> mean 15, std 5
    assert torch.allclose(out[2:], torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), atol=1e-6)


def test_reward_registry_names_match_the_recipe():
    assert tuple(REWARDS) == REWARD_NAMES


@pytest.mark.parametrize("name", [*REWARD_NAMES, "clip-zero-shot"])
def test_rewards_penalise_the_concept_and_reward_utility(name, tiny):
    from erasecli.concepts import tiny_concept
    from erasecli.models import tiny_world as W

    zero_shot = name == "clip-zero-shot"
    name = "clip" if zero_shot else name
    r = load_recipe(None, ["concept.name=digit 3", f"critic.reward={name}", f"critic.zero_shot={zero_shot}"])
    sets = tiny_concept("digit 3")
    reward = REWARDS[name](r, tiny, sets)
    d = W.load_split("heldout")
    three, seven = d.images[d.labels == 3][:4], d.images[d.labels == 7][:4]
    red = torch.zeros(4, dtype=torch.long)
    img3 = W.render(torch.from_numpy(three), red)
    img7 = W.render(torch.from_numpy(seven), red)
    forget = reward(img3, ["a red handwritten digit three"] * 4)
    other = reward(img7, ["a red handwritten digit three"] * 4)  # a forget prompt that drew something else
    retain_good = reward(img7, ["a red handwritten digit seven"] * 4)
    retain_bad = reward(img3, ["a red handwritten digit seven"] * 4)
    assert (forget < 0).all() and forget.mean() < other.mean()  # drawing the concept is penalised
    assert retain_good.mean() > retain_bad.mean() and (retain_good > 0).all()
    if zero_shot:  # a probability of "three" among the ten digits: near 1 for threes, near 0 for sevens
        assert forget.max() < -0.5 and other.min() > -0.5 and (forget >= -1).all()
        soft = REWARDS[name](load_recipe(None, ["concept.name=digit 3", "critic.zero_shot=true",
                                                "critic.temperature=2.5"]), tiny, sets)
        forget_t = soft(img3, ["a red handwritten digit three"] * 4)
        other_t = soft(img7, ["a red handwritten digit three"] * 4)
        # a higher temperature softens the probability both ways but keeps the order
        assert forget_t.mean() > forget.mean() and other_t.mean() < other.mean() and forget_t.mean() < other_t.mean()


def _red_and_blue(digit: int):
    from erasecli.models import tiny_world as W

    d = W.load_split("heldout")
    shapes = torch.from_numpy(d.images[d.labels == digit][:4])
    return (W.render(shapes, torch.full((4,), W.COLOUR_NAMES.index(c), dtype=torch.long)) for c in ("red", "blue"))


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_keep_weight_rewards_the_colour_a_forget_prompt_names(name, tiny):
    """critic.keep_weight adds the probability of what a forget prompt names besides the concept (the colour of
    "a red three"), so a red image scores above a blue one for it; a prompt naming no colour gets nothing."""
    from erasecli.concepts import tiny_concept

    sets = tiny_concept("digit 3")
    make = lambda w: REWARDS[name](load_recipe(None, ["concept.name=digit 3", f"critic.reward={name}",  # noqa: E731
                                                      "critic.zero_shot=true", "critic.temperature=2.5",
                                                      f"critic.keep_weight={w}"]), tiny, sets)
    plain, kept = make(0), make(1.0)
    red, blue = _red_and_blue(3)
    prompt = ["a red handwritten digit three"] * 4
    gain_red, gain_blue = kept(red, prompt) - plain(red, prompt), kept(blue, prompt) - plain(blue, prompt)
    assert (gain_red > 0.5).all() and (gain_blue < 0.2).all(), (gain_red, gain_blue)
    bare = ["a handwritten digit three"] * 4
    assert torch.allclose(kept(red, bare), plain(red, bare))
    retain = ["a red handwritten digit seven"] * 4  # retain prompts' reward is unchanged
    assert torch.allclose(kept(red, retain), plain(red, retain))


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_two_concepts_reward_penalises_either_on_every_forget_prompt(name, tiny):
    from erasecli.concepts import tiny_concept

    sets = tiny_concept(("digit 3", "digit 7"))
    reward = REWARDS[name](load_recipe(None, ["concept.name=digit 3", "concept.also=[digit 7]", f"critic.reward={name}",
                                              "critic.zero_shot=true"]), tiny, sets)
    three, seven, five = (next(_red_and_blue(d)) for d in (3, 7, 5))
    for prompt in ("a red handwritten digit three", "the number 7 in red"):
        p = [prompt] * 4
        assert reward(three, p).mean() < reward(five, p).mean() - 0.3
        assert reward(seven, p).mean() < reward(five, p).mean() - 0.3  # not one erased digit for the other


@pytest.mark.slow
def test_critic_rl_erases_two_concepts_into_one_delta_with_a_critic_for_both(tmp_path):
    sets = sum([["--set", s] for s in SHORT], [])
    both = ["--concept", "digit 3", "--concept", "digit 7"]
    p = erase("train-critic", *both, "--out", str(tmp_path / "c"), *sets, "--json")
    assert p.returncode == 0, p.stderr
    p = erase("unlearn", "--method", "critic-rl", *both, "--critic", str(tmp_path / "c"), "--steps", "2", *sets,
              "--out", str(tmp_path / "d"), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["delta"]["concepts"] == ["digit 3", "digit 7"]
    p = erase("unlearn", "--method", "critic-rl", "--concept", "digit 3", "--critic", str(tmp_path / "c"), *sets,
              "--out", str(tmp_path / "e"))
    assert "was trained for concept 'digit 3 + digit 7', not 'digit 3'" in one_line_error(p, 1)
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_train_critic_then_unlearn_with_it_raises_ua(tmp_path):
    sets = sum([["--set", s] for s in SHORT], [])
    critic = tmp_path / "critic"
    p = erase("train-critic", "--concept", "digit 3", "--reward", "classifier", "--out", str(critic), *sets,
              "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)["report"]
    assert len(rep["per_timestep"]) == 4 and rep["trajectories"] == 16
    assert {"critic.safetensors", "config.json", "critic_report.json", "critic_plot.png", "recipe.yaml"} <= \
        {f.name for f in critic.iterdir()}
    out = tmp_path / "no-three"
    p = erase("unlearn", "--method", "critic-rl", "--concept", "digit 3", "--critic", str(critic), "--out", str(out),
              "--steps", "60", "--lr", "1e-2", "--set", "critic.reward=classifier", "--set", "critic.clip_range=0.02",
              "--set", "critic.samples_per_prompt=4", "--set", "critic.timesteps_per_pass=4", *sets, "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)["summary"]
    assert summary["trained_here"] is False and summary["steps"] == 60
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all({"reward_forget", "reward_retain", "critic_loss", "clipfrac"} <= set(r) for r in rows)
    rf = [r["reward_forget"] for r in rows]  # the summary's trend is the log's first and last 10 steps
    assert summary["reward_forget"] == {"first_steps": 10, "first_mean": round(sum(rf[:10]) / 10, 4),
                                        "last_steps": 10, "last_mean": round(sum(rf[-10:]) / 10, 4)}
    p = erase("evaluate", "--concept", "digit 3", "--delta", str(out), "--metrics", "ua",
              "--samples-per-prompt", "2", "--json")
    assert p.returncode == 0, p.stderr
    ua = {m["name"]: m["metrics"]["ua"] for m in json.loads(p.stdout)["models"]}
    print(ua)
    assert ua["base"] <= 0.1 and ua["no-three"] >= ua["base"] + 0.2, ua


def _interrupt_at_step_2_and_resume(r, tiny, tmp_path):
    """Run `r` straight and interrupted after step 2 (checkpoint), resume; returns (steps the resume ran, straight
    delta's tensors, resumed delta's tensors)."""
    import os
    import signal

    from erasecli import api
    from erasecli.methods.loop import checkpoint_dir_for
    from test_unlearn import _delta_tensors

    api.unlearn(r, out=tmp_path / "straight", base=tiny)

    def interrupt(k, total, row):
        if k == 2:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "interrupted"
    with pytest.raises(Exception):
        api.unlearn(r, out=out, base=tiny, progress=interrupt)
    steps_run = []
    api.unlearn(None, out=None, resume=checkpoint_dir_for(out), base=tiny,
                progress=lambda k, total, row: steps_run.append(k))
    return steps_run, _delta_tensors(tmp_path / "straight"), _delta_tensors(out)


@pytest.mark.slow
def test_critic_rl_resumes_to_the_same_delta(tiny, tmp_path):
    r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", "train.steps=4", "train.checkpoint_every=3",
                           *SHORT])
    steps_run, a, b = _interrupt_at_step_2_and_resume(r, tiny, tmp_path)
    assert steps_run == [3, 4]  # continued after the checkpoint at step 2
    assert all(torch.equal(a[k], b[k]) for k in a)


def _fake_critic(folder: Path, concept: str):
    from erasecli.critic.model import Critic, CriticConfig, save_critic

    save_critic(Critic(CriticConfig(text_dim=64, width=8, blocks=1, t_dim=16)), folder,
                {"kind": "erasecli-critic", "base": "tiny", "concept": concept, "reward": "clip", "input": "noisy"})


@pytest.mark.parametrize("case", ["other-concept", "other-keep-weight", "missing-file", "bad-reward", "reward-flag"])
def test_bad_critic_input_is_one_line_and_writes_nothing(case, tmp_path):
    out = tmp_path / "out"
    if case == "other-concept":
        _fake_critic(tmp_path / "c", "digit 5")
        p = erase("unlearn", "--method", "critic-rl", "--concept", "digit 3", "--critic", str(tmp_path / "c"),
                  "--out", str(out))
        needle = "was trained for concept 'digit 5', not 'digit 3'"
    elif case == "other-keep-weight":  # its reward differs, so its values would too
        _fake_critic(tmp_path / "c", "digit 3")
        p = erase("unlearn", "--method", "critic-rl", "--concept", "digit 3", "--critic", str(tmp_path / "c"),
                  "--set", "critic.keep_weight=1", "--out", str(out))
        needle = "was trained for keep_weight 0.0, not 1.0"
    elif case == "missing-file":
        _fake_critic(tmp_path / "c", "digit 3")
        (tmp_path / "c" / "critic.safetensors").unlink()
        p = erase("unlearn", "--method", "critic-rl", "--concept", "digit 3", "--critic", str(tmp_path / "c"),
                  "--out", str(out))
        needle = "has no critic.safetensors"
    elif case == "bad-reward":
        p = erase("unlearn", "--method", "critic-rl", "--concept", "digit 3", "--set", "critic.reward=aesthetic",
                  "--out", str(out))
        needle = "critic.reward must be one of 'clip', 'classifier', got 'aesthetic'"
    else:
        p = erase("train-critic", "--concept", "digit 3", "--reward", "aesthetic", "--out", str(out))
        needle = "unknown reward 'aesthetic' (valid rewards: clip, classifier)"
    assert needle in one_line_error(p, 1)
    assert not out.exists() and not (tmp_path / "out.ckpt").exists()


RETAIN_LOSS = ["critic.retain_loss=1.0", "data.images_per_prompt=4", "data.retain_images_per_prompt=2"]
ANCHOR_LOSS = ["critic.anchor_loss=1.0", "data.images_per_prompt=4", "data.retain_images_per_prompt=2"]


@pytest.mark.slow
@pytest.mark.parametrize("sets", [["critic.kl_weight=0.5"], ["critic.kl_weight=0.5", "critic.kl_prompts=retain"],
                                  ["critic.per_step=false"], ["critic.input=clean"], RETAIN_LOSS, ANCHOR_LOSS],
                         ids=["kl", "kl-retain", "terminal-reward", "clean-input", "retain-loss", "anchor-loss"])
def test_ablation_switches_and_kl_run(sets, tiny, tmp_path):
    import math

    from erasecli import api

    r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", "train.steps=2", *SHORT, *sets])
    api.unlearn(r, out=tmp_path / "d", base=tiny)
    rows = [json.loads(line) for line in (tmp_path / "d" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)
    if "critic.kl_weight=0.5" in sets:  # once the adapter has moved, the kernel differs from the base's
        assert rows[1]["kl_base"] > 0
    else:
        assert all(row["kl_base"] == 0 for row in rows)
    assert all((row["L_r"] > 0) == ("critic.retain_loss=1.0" in sets) for row in rows)
    assert all((row["L_a"] > 0) == ("critic.anchor_loss=1.0" in sets) for row in rows)


@pytest.mark.parametrize("fraction, n_retain", [(0.5, 2), (0.25, 1), (0.0, 0)])
def test_retain_prompts_sets_the_share_of_retain_rollouts(fraction, n_retain):
    from types import SimpleNamespace

    from erasecli.errors import RecipeError
    from erasecli.methods.critic_rl import CriticRl

    r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", "critic.prompts_per_step=4",
                           "critic.samples_per_prompt=3", f"critic.retain_prompts={fraction}"])
    sets = SimpleNamespace(forget=["f0", "f1", "f2"], retain=["r0", "r1", "r2", "r3"])
    fake = SimpleNamespace(ctx=SimpleNamespace(recipe=r, data=SimpleNamespace(sets=sets), adversary=None,
                                               gen=torch.Generator().manual_seed(0)))
    prompts, adv = CriticRl._prompts(fake)
    assert len(prompts) == 12 and sum(p.startswith("r") for p in prompts) == 3 * n_retain and not any(adv)
    assert all(prompts[i] == prompts[i - i % 3] for i in range(12))  # each prompt's rollouts are adjacent
    with pytest.raises(RecipeError, match="retain_prompts"):
        load_recipe(None, ["method=critic-rl", "critic.retain_prompts=1.0"])


@pytest.mark.parametrize("fraction, trained", [(1.0, 4), (0.5, 2), (0.3, 2)])
def test_timestep_fraction_sets_how_many_steps_ppo_trains_on(fraction, trained, tiny, tmp_path, monkeypatch):
    from erasecli import api
    from erasecli.diffusion.rollout import Sampler
    from erasecli.errors import RecipeError

    recomputed = []  # the step index of every log-prob recomputed for PPO (prev_sample given)
    step = Sampler.step

    def counting(self, unet, x, k, *a, prev_sample=None, **kw):
        if prev_sample is not None:  # k: one step index per row when several steps share a pass
            recomputed.extend(k.unique().tolist() if isinstance(k, torch.Tensor) and k.ndim else [int(k)])
        return step(self, unet, x, k, *a, prev_sample=prev_sample, **kw)

    monkeypatch.setattr(Sampler, "step", counting)
    r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", "train.steps=1", *SHORT,
                           "critic.inner_epochs=2", f"critic.timestep_fraction={fraction}", "critic.timesteps_per_pass=3"])
    api.unlearn(r, out=tmp_path / "d", base=tiny)
    # critic.steps=4: ceil(4 * fraction) distinct steps per inner epoch, two epochs
    assert len(recomputed) == 2 * trained
    assert len(set(recomputed[:trained])) == trained and len(set(recomputed[trained:])) == trained
    for bad in ("0", "1.5"):
        with pytest.raises(RecipeError, match="timestep_fraction"):
            load_recipe(None, ["method=critic-rl", f"critic.timestep_fraction={bad}"])


def test_steps_per_pass_changes_the_speed_not_the_delta(tiny, tmp_path):
    """critic.timesteps_per_pass batches the PPO recompute of several denoising steps into one UNet pass: the same
    loss and gradient (float rounding aside), with the KL term too, so the delta after two updates is the same."""
    from safetensors.torch import load_file

    from erasecli import api
    from erasecli.errors import RecipeError

    deltas = {}
    for n in (1, 3):
        r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", "train.steps=2", *SHORT,
                               "critic.inner_epochs=2", "critic.kl_weight=0.5", f"critic.timesteps_per_pass={n}"])
        api.unlearn(r, out=tmp_path / str(n), base=tiny)
        deltas[n] = load_file(str(tmp_path / str(n) / "pytorch_lora_weights.safetensors"))
    scale = max(float(v.abs().max()) for v in deltas[1].values())
    assert scale > 0.01  # trained
    assert all((deltas[1][k] - deltas[3][k]).abs().max() <= 1e-3 * scale for k in deltas[1])
    with pytest.raises(RecipeError, match="timesteps_per_pass"):
        load_recipe(None, ["method=critic-rl", "critic.timesteps_per_pass=0"])


def test_reward_trend_averages_the_first_and_last_steps_and_skips_nan():
    from erasecli.methods.loop import reward_trend

    rows = [{"reward_forget": v} for v in [-0.6, -0.6, float("nan"), -0.2, -0.1, 0.0]]
    assert reward_trend(rows, "reward_forget", n=2) == {"first_steps": 2, "first_mean": -0.6,
                                                        "last_steps": 2, "last_mean": -0.05}
    assert reward_trend(rows[:2], "reward_forget", n=10)["last_steps"] == 2  # a run shorter than n
    assert reward_trend([{"loss": 1.0}], "reward_forget") == {}


def test_stop_reward_ends_the_run_once_the_forget_reward_mean_reaches_it(tiny, tmp_path):
    from erasecli import api
    from erasecli.errors import RecipeError

    def run(name, stop):
        r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", "train.steps=4", *SHORT,
                               f"critic.stop_reward={stop}", "critic.stop_window=2"])
        out = tmp_path / name
        summary = api.unlearn(r, out=out, base=tiny)["summary"]
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        return summary, rows

    summary, rows = run("stops", -2.0)  # -cos >= -1: the first full window reaches it
    assert summary["steps"] == len(rows) == 2
    mean = (rows[0]["reward_forget"] + rows[1]["reward_forget"]) / 2
    assert summary["stopped_early"] == {"step": 2, "reward_forget_mean": round(mean, 4)}
    summary, rows = run("runs-on", 1.5)  # out of reach: every step runs
    assert summary["steps"] == len(rows) == 4 and "stopped_early" not in summary
    with pytest.raises(RecipeError, match="stop_window"):
        load_recipe(None, ["method=critic-rl", "critic.stop_window=0"])


def test_chains_conditioned_through_token_ids_match_the_cached_prompt_path(tiny):
    """Robust and text-encoder runs condition each chain through token ids (ChainConditions); with no soft token
    in them a chain gets its prompt's cached states, the same trajectories and rewards, and (critic.robust_input:
    states) its prompt's pooled embedding."""
    from erasecli.concepts import tiny_concept
    from erasecli.critic.train import RolloutEnv
    from erasecli.methods.critic_rl import ChainConditions
    from erasecli.methods.robust import Conditions

    r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", *SHORT])
    env = RolloutEnv(r, tiny, tiny_concept("digit 3"))
    prompts = [env.prompts[1], env.prompts[1], env.prompts[-1], env.prompts[-1]]
    c = torch.tensor([env.index[p] for p in prompts])
    cond = Conditions(tiny, [""])
    try:
        ids = cond.tokenize(prompts)
        chains = ChainConditions(cond, ids, torch.full_like(ids, -1), torch.zeros(4, dtype=torch.bool))
        with torch.no_grad():
            emb_c, emb_u = chains.states()
        assert torch.allclose(emb_c, env.embeds[c], atol=1e-5) and torch.allclose(emb_u[0], env.embeds[0], atol=1e-5)
        assert torch.allclose(chains.pooled(), env.pooled[c], atol=1e-5)
        a, R_a = env.rollout(tiny.pipe.unet, prompts, torch.Generator().manual_seed(0))
        b, R_b = env.rollout(tiny.pipe.unet, prompts, torch.Generator().manual_seed(0), states=(emb_c, emb_u[0]))
        assert torch.equal(a.c, b.c) and torch.allclose(a.latents, b.latents, atol=1e-4)
        assert torch.allclose(R_a, R_b, atol=1e-4)

        # an adversarial chain reads its prompt's adversarial row (a soft token after BOS); its twin stays plain
        from types import SimpleNamespace

        from erasecli.methods.critic_rl import CriticRl

        row = len(cond.ids)
        S_adv = torch.full_like(ids[:1], -1)
        S_adv[0, 1] = 0
        cond.ids, cond.S = torch.cat([cond.ids, ids[:1]]), torch.cat([cond.S, S_adv])
        cond.P = torch.randn(1, cond.widths[0], generator=torch.Generator().manual_seed(1))
        fake = SimpleNamespace(ctx=SimpleNamespace(cond=cond, adversary=SimpleNamespace(adv_row={prompts[0]: row})),
                               ids=cond.tokenize(env.prompts), env=env)
        mixed = CriticRl._conditions(fake, prompts, [True, False, False, False])
        with torch.no_grad():
            m_c, _ = mixed.states()
        assert mixed.adv.tolist() == [True, False, False, False]
        assert torch.allclose(m_c[1:], env.embeds[c[1:]], atol=1e-5)
        assert (m_c[0] - env.embeds[c[0]]).abs().max() > 1e-2  # the soft token changed its states
        assert torch.allclose(m_c[:1], cond.encode_ids(cond.ids[row:], cond.S[row:], cond.P).float(), atol=1e-6)
        assert (mixed.pooled()[0] - env.pooled[c[0]]).abs().max() > 1e-3
    finally:
        cond.close()


@pytest.mark.slow
def test_robust_critic_rl_rolls_out_adversarial_chains_and_trains_the_text_encoder(tiny, tmp_path):
    """robust.enabled: from the first inner attack on, robust.mix of each step's forget prompts roll out under the
    attack's soft tokens (their reward logged apart); lora.text_encoder trains the text encoder's adapter through
    the PPO update; an interrupted run resumes to the same delta."""
    r = load_recipe(None, ["method=critic-rl", "concept.name=digit 3", "train.steps=4", "train.checkpoint_every=3",
                           *SHORT, "critic.prompts_per_step=4", "critic.retain_prompts=0", "data.images_per_prompt=1",
                           "data.retain_images_per_prompt=0",
                           "robust.enabled=true", "robust.warmup=1", "robust.every=2", "robust.attack_steps=2",
                           "lora.text_encoder=true", "critic.robust_input=states", "critic.anchor_loss=1.0"])
    steps_run, sd, resumed = _interrupt_at_step_2_and_resume(r, tiny, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    # 4 forget prompts x mix 0.5 = 2 adversarial prompts x 2 rollouts each, once the attack ran (before step 2)
    assert [row["adv_chains"] for row in rows] == [0, 4, 4, 4]
    assert all(row["reward_adv"] == row["reward_adv"] for row in rows[1:])  # measured, not NaN
    summary = json.loads((tmp_path / "straight" / "train_summary.json").read_text())
    assert summary["robust"]["refreshes"] == 2 and summary["robust"]["text_encoder_lora"]  # before steps 2 and 4
    up = [v for k, v in sd.items() if k.startswith("text_encoder.") and ".up." in k]
    assert up and max(float(v.abs().max()) for v in up) > 0  # the text encoder's adapter learned
    assert steps_run == [3, 4] and sd.keys() == resumed.keys() and all(torch.equal(sd[k], resumed[k]) for k in sd)


def test_rollouts_fold_the_adapter_in_and_leave_the_base_weights_exact(tiny):
    """critic-rl rolls out with its LoRA merged into the weights (delta.merged): the same predictions up to float
    rounding, the base weights back bit for bit afterwards, and an adapter switched off (base_only) stays off."""
    from erasecli.diffusion.cond import unet_eps
    from erasecli.delta import merged
    from erasecli.methods.adapter import attached, base_only

    unet, g = tiny.denoiser, torch.Generator().manual_seed(0)
    x, t, c = torch.randn(3, 4, 8, 8, generator=g), torch.tensor([50, 400, 900]), torch.randn(3, 16, 64, generator=g)
    with attached(tiny, rank=4, alpha=4.0, targets=["to_q", "to_k", "to_v", "to_out.0"], seed=0) as adapter, \
            torch.no_grad():
        for p in adapter.params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        weights = {n: p.clone() for n, p in unet.named_parameters() if "lora_" not in n}
        want = unet_eps(unet, x, t, c)
        with merged(unet):
            got = unet_eps(unet, x, t, c)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert all(torch.equal(weights[n], p) for n, p in unet.named_parameters() if "lora_" not in n)
        assert torch.equal(unet_eps(unet, x, t, c), want)  # the adapter works unmerged again
        with base_only(unet):
            base = unet_eps(unet, x, t, c)
            with merged(unet):
                assert torch.equal(unet_eps(unet, x, t, c), base)
        assert (want - base).abs().max() > 1e-3  # the adapter does something


def test_denoising_rows_riding_in_the_recompute_get_what_a_pass_of_their_own_gives(tiny):
    """critic-rl's retain and anchor terms ride in PPO's last recompute pass (guided_eps with `extra`): the guided
    prediction of the chains and the raw prediction of the extra rows, value and gradient, as two separate passes."""
    from erasecli.diffusion.cond import unet_eps
    from erasecli.diffusion.rollout import guided_eps
    from erasecli.methods.adapter import attached

    unet, g = tiny.denoiser, torch.Generator().manual_seed(0)
    x, c_u = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 16, 64, generator=g)
    c = torch.randn(4, 16, 64, generator=g)
    t = torch.tensor([100, 300, 500, 700])
    extra = (torch.randn(3, 4, 8, 8, generator=g), torch.tensor([10, 600, 990]), torch.randn(3, 16, 64, generator=g))
    with attached(tiny, rank=4, alpha=4.0, targets=["to_q", "to_k", "to_v", "to_out.0"], seed=0) as adapter:
        with torch.no_grad():
            for p in adapter.params:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        grads = []
        for together in (False, True):
            for p in adapter.params:
                p.grad = None
            if together:
                e, e_x = guided_eps(unet, x, t, c, c_u, 3.0, extra)
            else:
                e, e_x = guided_eps(unet, x, t, c, c_u, 3.0), unet_eps(unet, *extra)
            (e.square().sum() + 2 * e_x.square().sum()).backward()
            grads.append((e.detach(), e_x.detach(), [p.grad.clone() for p in adapter.params]))
    (e1, x1, g1), (e2, x2, g2) = grads
    torch.testing.assert_close(e2, e1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x2, x1, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
