"""Training the critic V_phi(x_t, t, c): regress the terminal reward R on every noisy step of base trajectories.

docs/methods.md, "Critic". Trajectories are sampled from the base (no adapter) with forget and retain
prompts (half each), DDIM eta > 0 over critic.steps steps; R = reward(decoded x_0, prompt). The critic sees
x_t (critic.input: noisy) or the step's predicted clean latent x0_hat (critic.input: clean), the timestep,
and the prompt's pooled text embedding. A fifth of the trajectories is held out; the explained variance of
R per timestep on them is the critic's report card (1 = V predicts R exactly, 0 = no better than the mean).
"""

from __future__ import annotations

import time

import torch

from erasecli.diffusion.cond import added_conditioning, encode_prompts, pooled_dim
from erasecli.data import base_latent_shape
from erasecli.errors import EraseError

CRITIC_KIND = "erasecli-critic"


def critic_inputs(traj, input_kind: str):
    """What the critic sees at each step: x_t (noisy) or x0_hat (clean).  (B, K, C, h, w)"""
    return traj.latents[:, :-1] if input_kind == "noisy" else traj.x0_hats


def values(critic, traj, texts, input_kind: str, chunk: int = 512):
    """V(s_k) for every trajectory and step.  (B, K)"""
    x = critic_inputs(traj, input_kind)
    B, K = x.shape[:2]
    flat = x.reshape(B * K, *x.shape[2:])  # (B*K, C, h, w)
    t = traj.timesteps.repeat(B)  # (B*K,)
    c = texts.repeat_interleave(K, 0)  # (B*K, D)
    out = torch.cat([critic(flat[i : i + chunk], t[i : i + chunk], c[i : i + chunk]) for i in range(0, B * K, chunk)])
    return out.view(B, K)


def rollout_prompts(sets, n: int, gen) -> list[str]:
    """n prompts, half forget and half retain (forget when there are no retain prompts), drawn with gen."""
    out = []
    for i in range(n):
        pool = sets.forget if (i % 2 == 0 or not sets.retain) else sets.retain
        out.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
    return out


class RolloutEnv:
    """Prompts, their embeddings, the sampler and the reward: what train-critic and critic-rl roll out with."""

    def __init__(self, recipe, base, sets, world=None):
        from erasecli.diffusion.rollout import Sampler, pooled_text
        from erasecli.dist import World
        from erasecli.rewards import make_reward

        self.recipe, self.base, self.sets = recipe, base, sets
        self.world = world or World()  # several processes: each rolls out its share of the chains
        cfg = recipe.critic
        self.prompts = list(dict.fromkeys(["", *sets.forget, *sets.retain]))
        self.index = {p: i for i, p in enumerate(self.prompts)}
        with torch.no_grad():
            self.embeds = encode_prompts(base.pipe, self.prompts, base.device).float()  # (P, L, D)
        self.pooled = pooled_text(base, self.prompts)  # (P, D)
        self.sampler = Sampler(base, cfg.steps, cfg.eta, recipe.sample.guidance)
        self.reward = make_reward(cfg.reward, recipe, base, sets)
        self.shape = base_latent_shape(base)

    def rollout(self, unet, prompts, gen, states=None):
        """Trajectories for `prompts` with `unet`, and their rewards (B,), scored against the prompts. `states`
        (emb_c (B, L, D), emb_u (L, D)): each chain's condition instead of its prompt's cached embedding (critic-rl's
        adversarial or text-encoder-adapted states); the trajectories' `c` still index the prompts. Several
        processes each sample and score their rows (`World.rows`) and gather the rest: every process returns the
        whole batch."""
        from erasecli.diffusion.rollout import Trajectories, decode

        c = torch.tensor([self.index[p] for p in prompts], device=self.base.device)
        w, n = self.world, len(prompts)
        if states is None:
            table, cs = self.embeds, c
        else:  # row 0 the unconditional state, row 1 + i chain i's condition
            table, cs = torch.cat([states[1][None], states[0]]), torch.arange(1, n + 1, device=c.device)
        traj = self.sampler.sample(unet, cs, table, self.shape, gen, rows=w.rows(n))
        R = self.reward(decode(self.base, traj.latents[:, -1]), [prompts[i] for i in w.rows(n)]).to(self.base.device)
        traj = Trajectories(c=c, latents=w.gather_rows(traj.latents, n), x0_hats=w.gather_rows(traj.x0_hats, n),
                            log_probs=w.gather_rows(traj.log_probs, n), timesteps=traj.timesteps,
                            prev_timesteps=traj.prev_timesteps)  # one process: its own rows, all of them
        return traj, w.gather_rows(R, n)


def explained_variance(pred, target) -> float:
    var = target.var(unbiased=False)
    return float("nan") if var <= 0 else float(1 - (target - pred).var(unbiased=False) / var)


def fit_critic(critic, opt, env, traj, R, epochs: int, batch: int, gen, pooled=None):
    """Regress R on every step of `traj` (B trajectories x K steps), `epochs` passes; returns the last loss.
    `pooled` (B, D): the critic's c per chain, if not its prompt's pooled embedding."""
    x = critic_inputs(traj, env.recipe.critic.input)
    B, K = x.shape[:2]
    flat = x.reshape(B * K, *x.shape[2:])  # (B*K, C, h, w)
    t = traj.timesteps.repeat(B)
    c = (env.pooled[traj.c] if pooled is None else pooled).repeat_interleave(K, 0)  # (B*K, D)
    target = R.repeat_interleave(K)  # (B*K,)
    loss = torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(B * K, generator=gen).to(flat.device)
        for i in range(0, B * K, batch):
            j = perm[i : i + batch]
            loss = (critic(flat[j], t[j], c[j]) - target[j]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return float(loss.detach())


def new_critic(recipe, base):
    from erasecli.critic.model import Critic, CriticConfig

    den = base.denoiser
    text_dim = pooled_dim(den) if added_conditioning(den) else base.pipe.text_encoder.config.hidden_size
    cfg = CriticConfig(latent_channels=base_latent_shape(base)[0], text_dim=text_dim,
                       width=recipe.critic.width, blocks=recipe.critic.blocks,
                       num_train_timesteps=base.pipe.scheduler.config.num_train_timesteps)
    return Critic(cfg).to(base.device)


def train_critic(recipe, base, sets, progress=None, env: RolloutEnv | None = None) -> tuple:
    """Sample base trajectories, fit the critic, measure it. Returns (critic, report dict). `env` reuses a
    caller's rollout environment (reward model and prompt embeddings) instead of building another."""
    cfg = recipe.critic
    t0 = time.time()
    gen = torch.Generator("cpu").manual_seed(recipe.train.seed + 3)
    torch.manual_seed(recipe.train.seed + 3)  # the critic's init
    env = env or RolloutEnv(recipe, base, sets)
    critic = new_critic(recipe, base)
    n, bs = cfg.train_trajectories, 32
    trajs, Rs, prompts = [], [], []
    unet = base.denoiser
    for i in range(0, n, bs):
        p = rollout_prompts(sets, min(bs, n - i), gen)
        traj, R = env.rollout(unet, p, gen)
        trajs.append(traj)
        Rs.append(R)
        prompts += p
        if progress:
            progress("sampling trajectories", i + len(p), n)
    from erasecli.diffusion.rollout import Trajectories

    cat = Trajectories(c=torch.cat([t.c for t in trajs]), latents=torch.cat([t.latents for t in trajs]),
                       x0_hats=torch.cat([t.x0_hats for t in trajs]), log_probs=torch.cat([t.log_probs for t in trajs]),
                       timesteps=trajs[0].timesteps, prev_timesteps=trajs[0].prev_timesteps)
    R = torch.cat(Rs)
    sample_seconds = time.time() - t0
    n_val = max(1, n // 5)
    idx = torch.randperm(n, generator=gen)
    val, tr = idx[:n_val].to(R.device), idx[n_val:].to(R.device)

    def sub(ix):
        return Trajectories(c=cat.c[ix], latents=cat.latents[ix], x0_hats=cat.x0_hats[ix],
                            log_probs=cat.log_probs[ix], timesteps=cat.timesteps, prev_timesteps=cat.prev_timesteps)

    opt = torch.optim.Adam(critic.parameters(), lr=cfg.lr)
    t1 = time.time()
    for e in range(cfg.train_epochs):
        loss = fit_critic(critic, opt, env, sub(tr), R[tr], 1, 256, gen)
        if progress:
            progress("fitting critic", e + 1, cfg.train_epochs)
    critic.eval()
    with torch.no_grad():
        V = values(critic, sub(val), env.pooled[cat.c[val]], cfg.input)  # (n_val, K)
    ev = [explained_variance(V[:, k], R[val]) for k in range(V.shape[1])]
    # R differs mostly between forget and retain prompts; what the critic adds beyond that split is the
    # explained variance of R around its group mean: 1 - Var(R - V) / Var(R - group mean)
    is_forget_val = torch.tensor([prompts[i] in set(sets.forget) for i in val.tolist()], device=R.device)
    centred = R[val].clone()
    for g in (is_forget_val, ~is_forget_val):
        if g.any():
            centred[g] -= centred[g].mean()
    within = [float("nan") if centred.var(unbiased=False) <= 0 else
              float(1 - (R[val] - V[:, k]).var(unbiased=False) / centred.var(unbiased=False))
              for k in range(V.shape[1])]
    rmse = [float((V[:, k] - R[val]).pow(2).mean().sqrt()) for k in range(V.shape[1])]
    is_forget = torch.tensor([p in set(sets.forget) for p in prompts])
    report = {
        "trajectories": n, "held_out": n_val, "steps": cfg.steps, "eta": cfg.eta, "reward": cfg.reward,
        "input": cfg.input, "train_loss": loss,
        "reward_mean": {"forget": float(R[is_forget.to(R.device)].mean()),
                        "retain": float(R[~is_forget.to(R.device)].mean()) if (~is_forget).any() else None},
        "per_timestep": [{"t": int(t), "explained_variance": round(e_, 4), "within_group_ev": round(w_, 4),
                          "rmse": round(r_, 5)} for t, e_, w_, r_ in zip(cat.timesteps.tolist(), ev, within, rmse)],
        "sampling_seconds": round(sample_seconds, 2), "fit_seconds": round(time.time() - t1, 2),
    }
    return critic, report


def _concept(recipe) -> str:
    """The concept (or concepts erased together) a critic's reward scores."""
    from erasecli.concepts import concept_names, joined_name

    return joined_name(concept_names(recipe))


def critic_metadata(recipe, base, report) -> dict:
    from erasecli import __version__

    return {"kind": CRITIC_KIND, "base": base.name, "base_arch": base.arch, "concept": _concept(recipe),
            "reward": recipe.critic.reward, "keep_weight": recipe.critic.keep_weight, "input": recipe.critic.input,
            "steps": recipe.critic.steps, "version": __version__, "report": report}


def check_critic(meta: dict, recipe, base_name: str, path) -> None:
    """Refuse a critic trained for another base, concept, reward (or keep weight) or input (its values would mean
    nothing)."""
    if meta.get("kind") != CRITIC_KIND:
        raise EraseError(f"{path} is not a critic written by `erase train-critic`",
                         hint="pass the folder `erase train-critic --out` wrote")
    for key, want in (("base", base_name), ("concept", _concept(recipe)), ("reward", recipe.critic.reward),
                      ("keep_weight", recipe.critic.keep_weight), ("input", recipe.critic.input)):
        had = meta.get(key, 0.0 if key == "keep_weight" else None)  # critics from before keep_weight: 0
        if str(had) != str(want):
            raise EraseError(f"critic {path} was trained for {key} {had!r}, not {want!r}",
                             hint=f"train one with `erase train-critic` for this {key}, or drop --critic")


def read_critic_meta(recipe, ref) -> dict:
    """A --critic folder's metadata, checked against the run (base, concept, reward, input) before loading."""
    from pathlib import Path

    from safetensors import safe_open

    from erasecli.critic.model import CONFIG_FILE, WEIGHTS_FILE, _decode_meta

    folder = Path(recipe.critic.path)
    for f in (folder / WEIGHTS_FILE, folder / CONFIG_FILE):
        if not f.is_file():
            raise EraseError(f"critic folder {folder} has no {f.name}",
                             hint="pass the folder `erase train-critic --out` wrote")
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as fh:
        meta = _decode_meta(fh.metadata() or {})
    check_critic(meta, recipe, ref.name, folder)
    return meta


def plot_critic(report: dict, path) -> None:
    """Bars of explained variance and RMSE per timestep (PIL, no plotting library)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = report["per_timestep"]
    font = ImageFont.load_default()
    w, h = 640, 420
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 6), f"critic on held-out trajectories ({report['held_out']}), by DDIM timestep t", fill=(0, 0, 0),
           font=font)
    for panel, (key, lo, hi) in enumerate((("explained_variance", -0.5, 1.0), ("rmse", 0.0, None))):
        top, bottom = 40 + panel * 190, 200 + panel * 190
        vals = [r[key] for r in rows]
        finite = [v for v in vals if v == v]
        top_val = hi if hi is not None else (max(finite) if finite else 1.0) or 1.0
        d.rectangle((50, top, w - 10, bottom), outline=(160, 160, 160))
        d.text((54, top + 2), f"{key} (axis {lo} .. {top_val:.3g})", fill=(0, 0, 0), font=font)
        bw = (w - 70) / max(1, len(rows))
        for i, (r, v) in enumerate(zip(rows, vals)):
            if v != v:
                continue
            v = min(max(v, lo), top_val)
            y = bottom - (bottom - top - 16) * (v - lo) / (top_val - lo)
            y0 = bottom - (bottom - top - 16) * (0 - lo) / (top_val - lo)
            d.rectangle((55 + i * bw, min(y, y0), 55 + (i + 1) * bw - 3, max(y, y0)), fill=(31, 119, 180))
            d.text((55 + i * bw, bottom + 2), str(r["t"]), fill=(90, 90, 90), font=font)
    img.save(path)
