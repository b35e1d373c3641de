"""Sampling-time guards: an erasure that changes how the denoiser's predictions are combined, not its weights.

SLD, Safe Latent Diffusion (Schramowski et al., CVPR 2023; docs/methods.md, "sld"). With u, p, S the
predictions under the empty prompt, the prompt and the safety concept at the same latent and timestep:

    diff  = p - S
    mu    = min(1, s_S |diff|)  where diff < lambda, else 0          (element-wise; s_S the guidance scale)
    g     = mu (S - u) + s_m nu                                      (nu the momentum, zero at the start)
    nu   <- beta_m nu + (1 - beta_m) g
    p'    = p - g   from step round(warmup x steps) of the trajectory on, else p

and classifier-free guidance then combines u + w (p' - u), which is SLD's
u + w (p - u - g). As diffusers' former StableDiffusionPipelineSafe, the momentum builds up during the
warm-up too; the warm-up is a share of the trajectory (the paper counts steps of a 50-step one).

The guard rides on the denoiser: `install` replaces the UNet instance's `forward` with one that adds the
empty prompt's and the safety concept's rows to each call and returns p' in place of p, so the pipeline's own
loop, scheduler and guidance run unchanged. It has two modes:

- trajectory (inside `trajectory(unet, cfg, steps)`: erasecli.sampling.generate): calls are the steps of
  one sampling run; with `cfg` the batch is the pipeline's [uncond, prompt] and u is read from its first
  half; momentum and warm-up follow the step count;
- point (everywhere else: the attacks' denoising loss): each call stands alone, u comes from the stored
  empty prompt, no momentum, and rows whose timestep lies in the warm-up share (t >= (1 - warmup) T) are left
  unguarded. The guarded conditional prediction p' is what the attacks differentiate.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from erasecli.diffusion.cond import unpack

PRESETS = {  # the paper's four configurations (for 50 sampling steps), as diffusers' SafetyConfig carries them
    "weak": {"guidance_scale": 20.0, "warmup_steps": 15, "threshold": 0.0, "momentum_scale": 0.0, "mom_beta": 0.0},
    "medium": {"guidance_scale": 1000.0, "warmup_steps": 10, "threshold": 0.01, "momentum_scale": 0.3,
               "mom_beta": 0.4},
    "strong": {"guidance_scale": 2000.0, "warmup_steps": 7, "threshold": 0.025, "momentum_scale": 0.5,
               "mom_beta": 0.7},
    "max": {"guidance_scale": 5000.0, "warmup_steps": 0, "threshold": 1.0, "momentum_scale": 0.5, "mom_beta": 0.7},
}
PAPER_STEPS = 50  # the trajectory length the presets' warm-up steps count


@dataclass(frozen=True)
class SldSettings:
    guidance_scale: float  # s_S
    warmup: float  # share of the trajectory before the guidance applies, in [0, 1]
    threshold: float  # lambda
    momentum_scale: float  # s_m
    mom_beta: float  # beta_m

    def warmup_steps(self, steps: int) -> int:
        """The first step (0-based) of a `steps`-step trajectory that is guided."""
        return int(round(self.warmup * steps))


def sld_term(u, p, s, settings: SldSettings):
    """mu (S - u): the safety term before momentum, element-wise (all tensors (B, C, H, W))."""
    diff = p - s
    mu = torch.clamp(diff.abs() * settings.guidance_scale, max=1.0)
    mu = torch.where(diff >= settings.threshold, torch.zeros_like(mu), mu)
    return (s - u) * mu


class SafetyGuard:
    """The guard of one safety concept: its condition tensor and the empty prompt's, from `encode_prompts`
    ((1, L, D); SDXL (1, L + 1, D)), and the settings."""

    def __init__(self, concept_c, uncond_c, settings: SldSettings, num_train_timesteps: int = 1000):
        self.concept_c = concept_c
        self.uncond_c = uncond_c
        self.settings = settings
        self.num_train_timesteps = num_train_timesteps
        self._run = None  # inside a trajectory: {"cfg", "step", "start", "momentum"}

    @contextmanager
    def trajectory(self, cfg: bool, steps: int):
        self._run = {"cfg": cfg, "step": 0, "start": self.settings.warmup_steps(steps), "momentum": None}
        try:
            yield
        finally:
            self._run = None

    def _rows(self, unet, c, n, like):
        """(states, added) of a stored condition repeated n times, in the dtype / device of `like`."""
        states, added = unpack(unet, c.to(like.device, like.dtype))
        states = states.expand(n, *states.shape[1:])
        if added is not None:
            added = {k: v.expand(n, *v.shape[1:]) for k, v in added.items()}
        return states, added

    def forward(self, unet, orig, sample, timestep, encoder_hidden_states, added_cond_kwargs, args, kwargs):
        run = self._run
        paired = run is not None and run["cfg"]
        n = sample.shape[0]
        b = n // 2 if paired else n
        if paired and n % 2:
            raise ValueError(f"a guided batch must hold [uncond, prompt] halves, got {n} rows")
        prompt_x = sample[n - b :]
        s_states, s_added = self._rows(unet, self.concept_c, b, encoder_hidden_states)
        t = torch.as_tensor(timestep, device=sample.device)
        if paired:  # [uncond, prompt] + [safety]
            x_in = torch.cat([sample, prompt_x])
            states = torch.cat([encoder_hidden_states, s_states])
            t_in = t if t.ndim == 0 else torch.cat([t, t[n - b :]])
        else:  # [uncond (stored)] + [prompt] + [safety]
            u_states, u_added = self._rows(unet, self.uncond_c, b, encoder_hidden_states)
            x_in = torch.cat([sample, sample, sample])
            states = torch.cat([u_states, encoder_hidden_states, s_states])
            t_in = t if t.ndim == 0 else torch.cat([t, t, t])
        added = None
        if added_cond_kwargs is not None:  # SDXL: pooled rows per part, the caller's time ids on every row
            ids, pooled = added_cond_kwargs["time_ids"], added_cond_kwargs["text_embeds"]
            if paired:
                added = {"text_embeds": torch.cat([pooled, s_added["text_embeds"]]),
                         "time_ids": torch.cat([ids, ids[n - b :]])}
            else:
                added = {"text_embeds": torch.cat([u_added["text_embeds"], pooled, s_added["text_embeds"]]),
                         "time_ids": torch.cat([ids, ids, ids])}
        extra = {"added_cond_kwargs": added} if added is not None else {}
        out = orig(x_in, t_in, states, *args, return_dict=False, **extra, **kwargs)[0]
        if paired:
            u, p, s = out[:b], out[b : 2 * b], out[2 * b :]
        else:
            u, p, s = out.chunk(3)
        g = sld_term(u.float(), p.float(), s.float(), self.settings)
        if run is not None:
            g, on = self._step(g)
            guided = p - g.to(p.dtype) if on else p
        else:
            t_rows = t.expand(b) if t.ndim == 0 else t
            on = (t_rows.float() < (1 - self.settings.warmup) * self.num_train_timesteps).view(-1, 1, 1, 1)
            guided = torch.where(on, p - g.to(p.dtype), p)
        return torch.cat([u, guided]) if paired else guided

    def _step(self, g):
        """One step of a trajectory: (g plus the momentum term, whether the step is past the warm-up); the
        momentum and the step count move on."""
        run, cfg = self._run, self.settings
        if run["momentum"] is None:
            run["momentum"] = torch.zeros_like(g)
        g = g + cfg.momentum_scale * run["momentum"]
        run["momentum"] = cfg.mom_beta * run["momentum"] + (1 - cfg.mom_beta) * g
        past = run["step"] >= run["start"]
        run["step"] += 1
        return g, past

    @staticmethod
    def _same(a, b):
        """(B,) bool: rows of `a` equal to those of `b` up to the rounding of another batch size."""
        return (a - b).abs().flatten(1).amax(1) <= 1e-4 * (1 + b.abs().amax())

    def forward_flow(self, den, orig, kwargs):
        """The guard restated for a Flux transformer (docs/methods.md, "Flux"). Its velocity v relates to the
        noise prediction by eps = x_t + (1 - sigma) v (x_t = (1 - sigma) x_0 + sigma eps, v = eps - x_0), so
        differences of noise predictions are (1 - sigma) times those of velocities: mu and the term are taken
        on those noise differences, as SLD defines them, and p' = p - g / (1 - sigma). FluxPipeline calls the
        transformer for the prompt and, under true classifier-free guidance, again for the empty prompt: rows
        whose condition is the stored empty prompt are u and pass unchanged; every other call is a step."""
        x, states = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        pooled, t = kwargs.get("pooled_projections"), kwargs["timestep"]
        n = x.shape[0]
        u_states, u_added = self._rows(den, self.uncond_c, n, states)
        empty = self._same(states, u_states) & self._same(pooled, u_added["pooled_projections"])
        if bool(empty.all()):
            return orig(**kwargs, return_dict=False)[0]
        s_states, s_added = self._rows(den, self.concept_c, n, states)
        call = dict(kwargs)
        call["hidden_states"] = torch.cat([x, x, x])
        call["encoder_hidden_states"] = torch.cat([u_states, states, s_states])
        call["pooled_projections"] = torch.cat([u_added["pooled_projections"], pooled,
                                                s_added["pooled_projections"]])
        t_rows = torch.as_tensor(t, device=x.device).expand(n)  # (B,): a scalar timestep on every row
        call["timestep"] = torch.cat([t_rows, t_rows, t_rows])
        if kwargs.get("guidance") is not None:
            call["guidance"] = torch.cat([kwargs["guidance"]] * 3)
        out = orig(**call, return_dict=False)[0]
        u, p, s = out.chunk(3)
        k = (1 - t_rows.float()).view(-1, *([1] * (p.ndim - 1)))  # d eps = (1 - sigma) d v
        g = sld_term(k * u.float(), k * p.float(), k * s.float(), self.settings)
        if self._run is not None:
            g, past = self._step(g)
            on = torch.full_like(k, float(past))
        else:
            on = (t_rows.float() < 1 - self.settings.warmup).float().view_as(k)
        dv = torch.where(k > 0, g / k.clamp_min(1e-6), torch.zeros_like(g)) * on
        guided = p - dv.to(p.dtype)
        return torch.where(empty.view(-1, *([1] * (p.ndim - 1))), p, guided)


def install(unet, guard: SafetyGuard) -> None:
    """Put the guard on the UNet (or Flux transformer) instance (its class and weights stay as they are; LoRA
    adapters still apply)."""
    from erasecli.diffusion.kinds import kind_of

    if guard_of(unet) is not None:
        raise ValueError("the UNet already carries a guard: remove it first")
    orig = unet.forward
    if kind_of(unet).flow:
        def flow_forward(*args, return_dict=True, **kwargs):
            if args:
                raise TypeError("a guarded Flux transformer takes keyword arguments only, as FluxPipeline calls it")
            out = guard.forward_flow(unet, orig, kwargs)
            if not return_dict:
                return (out,)
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=out)

        unet.forward = flow_forward
        unet._erasecli_guard = guard
        return

    def forward(sample, timestep, encoder_hidden_states=None, *args, added_cond_kwargs=None, return_dict=True,
                **kwargs):
        out = guard.forward(unet, orig, sample, timestep, encoder_hidden_states, added_cond_kwargs, args, kwargs)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    unet.forward = forward
    unet._erasecli_guard = guard


def remove(unet) -> None:
    guard = unet.__dict__.pop("_erasecli_guard", None)
    unet.__dict__.pop("forward", None)
    if guard is not None and hasattr(guard, "detach"):  # a guard with a text side (erasecli.diffusion.safree)
        guard.detach()


def guard_of(unet):
    return unet.__dict__.get("_erasecli_guard")


@contextmanager
def trajectory(unet, cfg: bool, steps: int):
    """The calls inside are the steps of one `steps`-step sampling run (a no-op on an unguarded UNet)."""
    g = guard_of(unet)
    if g is None:
        yield
        return
    with g.trajectory(cfg, steps):
        yield
