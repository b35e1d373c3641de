"""SAFREE's guard (Yoon et al., ICLR 2025; docs/methods.md, "safree"): the prompt's token states are filtered
against a concept subspace before the denoiser reads them; no weight changes.

With C the pooled text embeddings of the concept's keywords (K, D) and P_C the projection onto their span, for a
prompt of n real tokens (between BOS and EOS) with states e_0..e_{L-1}:

    m_i   = pooled embedding of the prompt with token i masked (its input embedding set to token 0's)
    d_i   = |(I - P_C) m_i|                          how far the prompt lies from the subspace without token i
    token i is a trigger when d_i >= (1 + alpha) mean_{j != i} d_j (leaving it out moves the prompt away)
    P_M   = the projection onto span(m_1..m_n)       (the prompt's own input space)
    e_i'  = (I - P_C) P_M e_i  at trigger positions, e_i elsewhere

Self-validating filtering: beta = 1 - mean cos(e_j, (I - P_C) P_M e_j) over BOS, the tokens and EOS, and the
filtered states are used for the first t' = round(U sigmoid(2 k (10 beta - t0))) + 1 steps of a 50-step
trajectory (U = svf_steps; applied as that share of any trajectory), the original states afterwards.

How it is carried: the text encoder's forward (an instance patch) computes the filtered states of each encoded
prompt that has a trigger and keeps them, keyed by the original states' values; the UNet's forward (the same
patch as erasecli.diffusion.guard) swaps each condition row it recognises for its filtered one while the
row's timestep lies in the filtered share. So the pipeline's own prompt encoding and loop, and the attacks'
differentiable encodings (erasecli.diffusion.cond.encode_ids), all pass through it.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch

PAPER_STEPS = 50


@dataclass(frozen=True)
class SafreeSettings:
    alpha: float  # trigger margin
    svf: bool  # self-validating filtering; False: the filtered states at every step
    svf_steps: int  # U: the most steps (of 50) that use the filtered states
    svf_midpoint: float  # t0
    svf_sharpness: float  # k
    positions: str = "triggers"  # "triggers" (the paper) or "after": also remove the subspace, (I - P_C) e, from
    # every later state (a causal text encoder's later states, EOS and padding included, read the trigger) [ours]


def projection(E: torch.Tensor) -> torch.Tensor:
    """(D, D) projection onto the row span of E (N, D)."""
    E = E.float()
    return E.T @ torch.linalg.pinv(E @ E.T) @ E


def svf_steps(beta: float, s: SafreeSettings) -> int:
    """t': the last step (of 50, from 0) that uses the filtered states."""
    if not s.svf:
        return PAPER_STEPS
    if math.isnan(beta):
        return 0
    return round(s.svf_steps / (1 + math.exp(-2 * s.svf_sharpness * (10 * beta - s.svf_midpoint))))


def plan(states: torch.Tensor, masked: torch.Tensor, P_C: torch.Tensor, s: SafreeSettings):
    """One prompt: states (L, D), the n masked prompts' pooled embeddings (n, D). Returns (filtered states,
    trigger mask (n,) bool, beta, t'). Differentiable in states and masked."""
    n, D = masked.shape
    eye = torch.eye(D, device=states.device)
    away = eye - P_C.to(states.device)
    d = (masked.float() @ away).norm(dim=-1)  # (n,)
    if n == 1:  # nothing to compare with: the one token is a trigger (the reference's mean over none is NaN)
        trigger = torch.ones(1, dtype=torch.bool, device=states.device)
    else:
        mean_others = (d.sum() - d) / (n - 1)
        trigger = ~(d < (1 + s.alpha) * mean_others)
    Pm = away @ projection(masked)  # (D, D): (I - P_C) P_M
    proj = states.float() @ Pm.T  # rows: (I - P_C) P_M e
    pos = torch.zeros(states.shape[0], dtype=torch.bool, device=states.device)
    pos[1 : n + 1] = trigger
    kept = states.float()
    if s.positions == "after" and bool(trigger.any()):  # the later states lose the subspace only
        later = torch.zeros_like(pos)
        later[1 + int(torch.nonzero(trigger)[0]) :] = True
        kept = torch.where(later[:, None], kept @ away, kept)
    filtered = torch.where(pos[:, None], proj, kept).to(states.dtype)
    live = slice(0, n + 2)  # BOS, the tokens, EOS: the tokenizer's attention mask
    beta = 1 - torch.nn.functional.cosine_similarity(proj[live], states.float()[live], dim=-1).mean().item()
    return filtered, trigger, beta, svf_steps(beta, s)


def row_key(row: torch.Tensor) -> bytes:
    """A key of a condition row's values that survives the casts a pipeline makes (fp32 -> fp16)."""
    return hashlib.blake2b(row.detach().to(torch.float16).cpu().numpy().tobytes(), digest_size=16).digest()


class SafreeGuard:
    """The guard of one concept subspace: C (K, D), the concept keywords' pooled embeddings, and the settings."""

    capacity = 1024  # filtered prompts kept (only prompts with a trigger are kept)

    def __init__(self, concept_pooled: torch.Tensor, settings: SafreeSettings, num_train_timesteps: int = 1000):
        self.P_C = projection(concept_pooled)
        self.settings = settings
        self.num_train_timesteps = num_train_timesteps
        self.filtered: OrderedDict = OrderedDict()  # row key -> (filtered (L, D), t')
        self.log: list = []  # (n tokens, trigger positions, beta, t') of each prompt with a trigger
        self._text_encoder = None

    @contextmanager
    def trajectory(self, cfg: bool, steps: int):  # the filter reads each row's timestep: nothing to count
        yield

    # -- the text side ------------------------------------------------------------------------------------
    def attach(self, text_encoder) -> None:
        orig = text_encoder.forward
        guard = self

        def forward(input_ids=None, *args, **kwargs):
            out = orig(input_ids, *args, **kwargs)
            if input_ids is not None and not guard._busy:
                guard._encoded(text_encoder, orig, input_ids, out, args, kwargs)
            return out

        self._busy = False
        text_encoder.forward = forward
        self._text_encoder = text_encoder

    def detach(self) -> None:
        if self._text_encoder is not None:
            self._text_encoder.__dict__.pop("forward", None)
            self._text_encoder = None

    def _masked_pooled(self, text_encoder, orig, ids: torch.Tensor, n: int, kwargs) -> torch.Tensor:
        """(n, D) pooled embeddings of one prompt's ids (L,) with token i (position i + 1) masked: its input
        embedding replaced by token 0's, after any hooks an attack put on the input embeddings."""
        emb = text_encoder.get_input_embeddings()
        batch = ids[None].repeat(n, 1)
        rows = torch.arange(n, device=ids.device)

        def hook(module, args, out):
            out = out.clone()
            out[rows, rows + 1] = module.weight[0].to(out.dtype)
            return out

        handle = emb.register_forward_hook(hook)
        self._busy = True
        try:
            res = orig(batch)
        finally:
            self._busy = False
            handle.remove()
        return res[1] if not hasattr(res, "pooler_output") else res.pooler_output

    def _encoded(self, text_encoder, orig, input_ids, out, args, kwargs) -> None:
        states = out[0] if not hasattr(out, "last_hidden_state") else out.last_hidden_state
        for b in range(input_ids.shape[0]):
            ids = input_ids[b]
            n = int(ids.argmax()) - 1  # EOS is the vocabulary's last id and the first EOS ends the prompt
            if n < 1:
                continue
            masked = self._masked_pooled(text_encoder, orig, ids, n, kwargs)
            filtered, trigger, beta, t_last = plan(states[b], masked, self.P_C, self.settings)
            if not bool(trigger.any()):
                continue
            self._keep(row_key(states[b]), filtered, t_last)
            self.log.append((n, [i + 1 for i in torch.nonzero(trigger).flatten().tolist()], round(beta, 4), t_last))
            del self.log[:-self.capacity]

    def _keep(self, key: bytes, filtered: torch.Tensor, t_last: int) -> None:
        """Keep a prompt's filtered states; of those that carry a graph (an attack's step) only the newest few,
        so an attack's many steps do not hold their graphs."""
        self.filtered[key] = (filtered, t_last)
        self.filtered.move_to_end(key)
        graphs = [k for k, (f, _) in self.filtered.items() if f.requires_grad]
        for k in graphs[:-4]:
            del self.filtered[k]
        while len(self.filtered) > self.capacity:
            self.filtered.popitem(last=False)

    # -- the denoiser side --------------------------------------------------------------------------------
    def in_window(self, t: float, t_last: int) -> bool:
        """Is a row at timestep t within the first t_last + 1 of 50 steps' share of the trajectory?"""
        T = self.num_train_timesteps
        return (T - t) / T <= (t_last + 1) / PAPER_STEPS

    def swap(self, states: torch.Tensor, timestep) -> torch.Tensor:
        if not self.filtered:
            return states
        t = torch.as_tensor(timestep).flatten()
        rows, changed = [], False
        for b in range(states.shape[0]):
            hit = self.filtered.get(row_key(states[b]))
            tb = float(t[b] if t.numel() > 1 else t[0])
            if hit is not None and self.in_window(tb, hit[1]):
                rows.append(hit[0].to(states.device, states.dtype))
                changed = True
            else:
                rows.append(states[b])
        return torch.stack(rows) if changed else states

    def forward(self, unet, orig, sample, timestep, encoder_hidden_states, added_cond_kwargs, args, kwargs):
        states = self.swap(encoder_hidden_states, timestep)
        extra = {"added_cond_kwargs": added_cond_kwargs} if added_cond_kwargs is not None else {}
        return orig(sample, timestep, states, *args, return_dict=False, **extra, **kwargs)[0]
