"""The critic V_phi(x_t, t, c): a small conv net that scores a noisy latent at a timestep under a prompt.

Code names and the math they stand for:

- `x_t` (B, C, H, W): the noisy latent x_t at denoising step t.
- `t` (B,): the timestep t in [0, num_train_timesteps); rescaled to a 0..1000 range before the sinusoidal
  embedding so a critic's embedding means the same whatever the scheduler's length.
- `text` (B, text_dim): the pooled prompt embedding, standing in for the condition c.
- `cond` (B, t_dim): the conditioning vector e = SiLU(MLP(sin(t)) + W_c c); it enters every block by FiLM.
- `gamma`, `beta` (B, width): per-block FiLM terms [gamma; beta] = W_k e + b_k, applied as
  h * (1 + gamma) + beta after the block's GroupNorm.
- `Critic.forward` returns V_phi(x_t, t, c) (B,): one scalar value per sample.

`save_critic` / `load_critic` keep a critic as `critic.safetensors` (weights, run metadata in the header) and
`config.json` (the `CriticConfig`), written into a folder atomically.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from erasecli.outputs import replace_dir, staging_dir

WEIGHTS_FILE = "critic.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class CriticConfig:
    """Architecture of a critic; everything needed to rebuild one before loading its weights."""

    latent_channels: int = 4
    text_dim: int = 768
    width: int = 64
    blocks: int = 3
    t_dim: int = 128
    num_train_timesteps: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CriticConfig:
        # Unknown keys are an error, not silently dropped: a config from a newer critic must not load as a
        # different architecture.
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CriticConfig keys: {sorted(unknown)}")
        return cls(**d)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of timesteps t (B,) -> (B, dim): [sin(t w_i), cos(t w_i)] with
    w_i = exp(-log(10000) * i / (dim / 2)), i = 0 .. dim/2 - 1."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
    half = dim // 2
    # Computed in float32 whatever the caller's dtype: half precision loses the phase at large t.
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, dim)


def _groups(width: int) -> int:
    """The largest group count <= 8 that divides `width` (GroupNorm needs an exact split)."""
    return next(g for g in range(min(8, width), 0, -1) if width % g == 0)


class FiLMBlock(nn.Module):
    """Residual block h + conv(SiLU(FiLM(GroupNorm(h), e))), FiLM from the conditioning vector e."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(width), width)
        # Default (non-zero) init on purpose: a zero-init FiLM would make V_phi blind to t and c at init, and
        # the critic must separate timesteps from its first update.
        self.film = nn.Linear(cond_dim, 2 * width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(cond).chunk(2, dim=-1)  # (B, width) each
        y = self.norm(h)  # (B, width, H, W)
        # 1 + gamma so that gamma = 0 is the identity scale, not a zeroed feature map.
        y = y * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return h + self.conv(F.silu(y))


class Critic(nn.Module):
    """V_phi(x_t, t, c): conv stem, FiLM residual blocks with stride-2 downsampling between them, pooled head."""

    def __init__(self, cfg: CriticConfig | None = None):
        super().__init__()
        cfg = cfg or CriticConfig()
        if cfg.blocks < 1:
            raise ValueError(f"a critic needs at least one block, got blocks={cfg.blocks}")
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Conv2d(cfg.latent_channels, w, 3, padding=1)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.t_dim, cfg.t_dim), nn.SiLU(), nn.Linear(cfg.t_dim, cfg.t_dim))
        self.text_proj = nn.Linear(cfg.text_dim, cfg.t_dim)
        self.blocks = nn.ModuleList(FiLMBlock(w, cfg.t_dim) for _ in range(cfg.blocks))
        # One downsampler per gap between blocks; each is skipped at run time once the map is 2x2 or smaller,
        # so the same weights serve 8x8 test latents and 64x64 SD latents.
        self.downs = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for _ in range(cfg.blocks - 1))
        self.head = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 1))

    def condition(self, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The conditioning vector e = SiLU(MLP(sin(t')) + W_c c), t' = t / num_train_timesteps * 1000."""
        t = t.to(torch.float32) * (1000.0 / self.cfg.num_train_timesteps)  # (B,)
        dtype = self.text_proj.weight.dtype
        emb = sinusoidal_embedding(t, self.cfg.t_dim).to(dtype)  # (B, t_dim)
        return F.silu(self.time_mlp(emb) + self.text_proj(text.to(dtype)))  # (B, t_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int | float, text: torch.Tensor) -> torch.Tensor:
        """V_phi(x_t, t, c) (B,) for x_t (B, C, H, W), t (B,) long or float (a scalar is broadcast),
        text (B, text_dim)."""
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,) or text.shape != (B, self.cfg.text_dim):
            raise ValueError(f"critic expects t ({B},) and text ({B}, {self.cfg.text_dim}); "
                             f"got t {tuple(t.shape)}, text {tuple(text.shape)}")
        cond = self.condition(t, text)  # (B, t_dim)
        h = self.stem(x_t.to(self.stem.weight.dtype))  # (B, width, H, W)
        for i, block in enumerate(self.blocks):
            h = block(h, cond)
            if i < len(self.downs) and min(h.shape[-2:]) > 2:
                h = self.downs[i](h)  # (B, width, ceil(H/2), ceil(W/2))
        pooled = h.mean(dim=(-2, -1))  # (B, width)
        return self.head(pooled).squeeze(-1)  # (B,)


def _encode_meta(metadata: dict) -> dict[str, str]:
    # The safetensors header only holds str -> str; non-strings go through JSON so load can give them back.
    out = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str):
            raise TypeError(f"critic metadata keys must be strings, got {k!r}")
        out[k] = v if isinstance(v, str) else json.dumps(v)
    return out


def _decode_meta(header: dict[str, str]) -> dict:
    # "Where possible": a plain string that is not JSON (a model name, say) comes back unchanged. A string
    # that happens to be JSON ("3", "true") comes back decoded; callers wanting it as text should not rely
    # on the round trip for such values.
    out = {}
    for k, v in header.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def save_critic(critic: Critic, folder, metadata: dict | None = None, extra=None) -> Path:
    """Write `critic.safetensors` (weights; `metadata` in the header) and `config.json` to `folder`,
    atomically: built in a temp folder beside it, then swapped in (an existing folder is replaced)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    header = _encode_meta(metadata or {})
    state = {k: v.detach().to("cpu").contiguous() for k, v in critic.state_dict().items()}
    tmp = staging_dir(folder)
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=header)
        (tmp / CONFIG_FILE).write_text(json.dumps(critic.cfg.to_dict(), indent=2))
        if extra is not None:  # reports and plots that belong in the same folder, swapped in with it
            extra(tmp)
        replace_dir(tmp, folder, overwrite=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once the rename succeeded
    return folder


def load_critic(folder, device="cpu") -> tuple[Critic, dict]:
    """Rebuild a critic saved by `save_critic`; returns (critic on `device`, metadata with JSON decoded)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"critic folder {folder} has no {f.name} (expected {f})")
    cfg = CriticConfig.from_dict(json.loads(cfg_file.read_text()))
    critic = Critic(cfg)
    critic.load_state_dict(load_file(str(weights_file), device="cpu"))
    with safe_open(str(weights_file), framework="pt") as fh:
        header = fh.metadata() or {}
    return critic.to(device), _decode_meta(header)
