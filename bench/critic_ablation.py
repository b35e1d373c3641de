"""critic-rl ablations: per-step critic advantages against the terminal reward only (DDPO), same seed.

1. Gradient variance (default): with a fresh adapter and one trained critic, the same prompt batch is rolled
   out `--repeats` times; on each set of trajectories the policy gradient g = grad sum_k -(A_k log p_k) / K is
   taken once with per-step advantages (GAE from the critic) and once with the terminal reward, both
   normalised per prompt. Reported: the trace of each estimator's covariance over repeats, relative to the
   squared norm of its mean (lower = a steadier gradient), and the cosine between the two mean gradients.
2. `--full`: both variants (and `critic.input: clean` with `--clean`) trained with the shipped tiny recipe
   for the same steps, hence the same number of sampled trajectories, then judged by one `erase evaluate`.

    python -m bench.critic_ablation [--repeats 8] [--full] [--clean] [--concept "digit 3"] [--samples-per-prompt 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.common import emit

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny-digit-critic-rl.yaml"


def gradient_variance(concept: str, repeats: int, seed: int) -> None:
    import torch

    from erasecli.critic.train import RolloutEnv, train_critic, values
    from erasecli.concepts import tiny_concept
    from erasecli.methods.critic_rl import gae_over_steps, normalise_per_prompt
    from erasecli.methods.adapter import attached_for
    from erasecli.models.registry import load_base
    from erasecli.recipes import load_recipe

    torch.set_num_threads(2)
    r = load_recipe(RECIPE, [f"concept.name={concept}", f"train.seed={seed}"])
    base = load_base("tiny", device="cpu")
    sets = tiny_concept(r.concept.name, r.concept.kind)
    critic, report = train_critic(r, base, sets)
    attached_ctx = attached_for(r.lora, base, r.train.seed)  # held until the function returns: the adapter stays on meanwhile
    params = attached_ctx.__enter__().params
    with torch.no_grad():  # a non-zero adapter, as mid-training: lora_B starts at 0, which zeroes lora_A's grads
        g = torch.Generator().manual_seed(seed)
        for n, p in base.pipe.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    env = RolloutEnv(r, base, sets)
    cfg = r.critic
    gen = torch.Generator().manual_seed(seed + 10)
    prompts = [sets.forget[0], sets.forget[5], sets.retain[0], sets.retain[20]]
    prompts = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    unet = base.pipe.unet
    grads = {"per_step": [], "terminal": []}
    for _ in range(repeats):
        traj, R = env.rollout(unet, prompts, gen)
        B, K = traj.log_probs.shape
        with torch.no_grad():
            V = values(critic, traj, env.pooled[traj.c], cfg.input)
        adv = {"per_step": normalise_per_prompt(gae_over_steps(V, R, cfg.gae_lambda), prompts),
               "terminal": normalise_per_prompt(R[:, None].expand(B, K), prompts)}
        emb_c, emb_u = env.embeds[traj.c], env.embeds[torch.zeros_like(traj.c)]
        logps = []
        for j in range(K):  # one graph per step, reused by both estimators
            logps.append(env.sampler.step(unet, traj.latents[:, j], j, emb_c, emb_u,
                                          prev_sample=traj.latents[:, j + 1]).log_prob)
        logp = torch.stack(logps, 1)  # (B, K)
        for name, A in adv.items():
            loss = -(A * logp).mean(0).sum() / K
            gs = torch.autograd.grad(loss, params, retain_graph=True)
            grads[name].append(torch.cat([x.flatten() for x in gs]))
    mean = {}
    for name, gs in grads.items():
        G = torch.stack(gs)  # (repeats, P)
        mean[name] = G.mean(0)
        var = G.var(0, unbiased=True).sum().item()
        rel = var / max(mean[name].pow(2).sum().item(), 1e-30)
        emit("critic_ablation", f"pg_variance_{name}", var, "sum of per-parameter variances", repeats=repeats,
             trajectories_per_estimate=len(prompts), concept=concept, seed=seed)
        emit("critic_ablation", f"pg_relative_variance_{name}", rel, "variance / |mean|^2", repeats=repeats,
             trajectories_per_estimate=len(prompts), concept=concept, seed=seed)
    cos = torch.nn.functional.cosine_similarity(mean["per_step"], mean["terminal"], dim=0).item()
    emit("critic_ablation", "pg_mean_cosine_per_step_vs_terminal", cos, "", repeats=repeats, concept=concept)
    ev = [row["within_group_ev"] for row in report["per_timestep"]]
    emit("critic_ablation", "critic_within_group_explained_variance", ev, "per timestep, high t first",
         timesteps=[row["t"] for row in report["per_timestep"]], concept=concept)


def full(concept: str, seed: int, clean: bool, samples_per_prompt: int) -> None:
    from bench.unlearn_compare import erase

    work = Path(tempfile.mkdtemp(prefix="erasecli-ablation-"))
    os.environ.setdefault("ERASECLI_CACHE", str(work / "cache"))
    variants = {"per_step": [], "terminal": ["--set", "critic.per_step=false"]}
    if clean:
        variants["clean_input"] = ["--set", "critic.input=clean"]
    summaries = {}
    for name, extra in variants.items():
        res = erase("unlearn", "--recipe", str(RECIPE), "--concept", concept, "--seed", str(seed), "--out",
                    str(work / name), *extra)
        summaries[name] = res["summary"]
    rep = erase("evaluate", "--concept", concept, *sum([["--delta", str(work / n)] for n in variants], []),
                "--metrics", "ua,ira,cra", "--samples-per-prompt", str(samples_per_prompt))
    for row in rep["models"]:
        if row["name"] == "base":
            continue
        s = summaries[row["name"]]
        for key in ("ua", "ira", "cra"):
            emit("critic_ablation", key, row["metrics"][key], "", variant=row["name"], concept=concept, seed=seed,
                 steps=s["steps"], trajectories=s["steps"] * 16,
                 eval_images_per_model=rep["protocol"]["images_per_model"])
        emit("critic_ablation", "train_seconds", s["train_seconds"], "s", variant=row["name"],
             critic_seconds=s.get("critic_seconds"))
    print(f"deltas in {work}", file=sys.stderr)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.critic_ablation")
    ap.add_argument("--concept", default="digit 3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="also train both variants and evaluate them")
    ap.add_argument("--clean", action="store_true", help="with --full: also the critic-on-x0_hat variant")
    ap.add_argument("--samples-per-prompt", type=int, default=4,
                    help="with --full: evaluation images per prompt (see bench.unlearn_compare)")
    a = ap.parse_args(argv)
    gradient_variance(a.concept, a.repeats, a.seed)
    if a.full:
        full(a.concept, a.seed, a.clean, a.samples_per_prompt)


if __name__ == "__main__":
    main()
