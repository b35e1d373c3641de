"""uce and rece: closed-form edits of the cross-attention key and value projections, as an exact LoRA.

docs/methods.md, "uce" and "rece". For each edited projection W0 (attn2.to_k / attn2.to_v, out x in), with
c_i the erased text embeddings (token states of the forget prompts), v*_i = W0 g_i the base's output for the
aligned token of the prompt's guide, c_j the retain prompts' token states:

    M = lam I + s_e sum_i c_i c_i^T + s_p sum_j c_j c_j^T
    W = (lam W0 + s_e sum_i v*_i c_i^T + s_p sum_j W0 c_j c_j^T) M^-1

Subtracting W0 M from both sides, W - W0 = s_e sum_i (v*_i - W0 c_i) c_i^T M^-1: a matrix of rank at most
min(#erased, out, in). Since v*_i = W0 g_i, it is W0 P with one P = K M^-1 (in x in) shared by every projection
(`shared_map`); P's SVD gives right (in x r) and down (r x in), so each projection's LoRA is up = W0 right,
down, of rank r = min(#erased, in) with alpha = r (scale 1): the delta reproduces W to float precision and
loads like any other.

On SDXL (uce.pooled) the layer that reads the pooled text embedding, add_embedding.linear_1, gets the same solve
on pooled embeddings in its pooled columns (`pooled_edit`), one more module of the same LoRA.

rece (RECE, Gong et al. 2024) then repeats, `uce.rounds` times: for the edited projections W_l, the
embedding that makes them give the base's output for an erased embedding c is, in closed form,
    c' = (mu I + sum_l W_l^T W_l)^-1 sum_l W_l^T W0_l c      (mu = uce.rece_lam; sum over every edited layer),
the text state that brings the concept back; every such c' joins the erased set (mapped to the guide of its
c, weight uce.rece_scale) and the edit is solved again from W0, with the same retain term.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import ClassVar

import torch

from erasecli.errors import RecipeError
from erasecli.methods import Method

DTYPE = torch.float64  # the solves run in double precision; the LoRA factors are stored in fp32


def solve_device(base):
    """Where the solves run: the base's CUDA device, else the CPU (MPS has no float64)."""
    return base.device if getattr(base.device, "type", "cpu") == "cuda" else torch.device("cpu")


class ClosedForm(Method):
    """The interface of a method with no training loop: `edit` returns the factors of each edited module."""

    closed_form: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = False
    supports_robust: ClassVar[bool] = False
    supports_text_encoder: ClassVar[bool] = False
    why_not_robust: ClassVar[str] = "it is a closed-form edit of the UNet"

    @classmethod
    def uses_images(cls, recipe) -> bool:
        return False

    @classmethod
    def check(cls, recipe) -> None:
        if recipe.uce.guide not in ("anchor", "empty") and "{" in recipe.uce.guide:
            raise RecipeError(f"uce.guide {recipe.uce.guide!r} is a template", hint="give plain text, 'anchor' or 'empty'")


def edited_modules(unet, which) -> dict:
    """{module name: nn.Linear} of every cross-attention projection named in `which` (to_k, to_v); where an
    adapter layer (peft) wraps one, its frozen base layer. On Flux the one layer that reads the text states alone
    (the context embedder), whatever `which` says."""
    from erasecli.diffusion.kinds import kind_of

    kind = kind_of(unet)
    targets = [t for t in kind.closed_form_targets if kind.flow or t.rsplit(".", 1)[-1] in which]
    found = {n: getattr(m, "base_layer", m) for n, m in unet.named_modules() if any(n.endswith(t) for t in targets)}
    return {n: m for n, m in found.items() if isinstance(m, torch.nn.Linear)}


def _tokenizer(base):
    """The tokenizer of the states the edited layers read (CLIP's; T5's on Flux)."""
    return getattr(base.pipe, base.kind.states_tokenizer)


def _ids(base, prompts):
    from erasecli.diffusion.cond import max_sequence_length

    tok = _tokenizer(base)
    length = max_sequence_length(base.pipe) if base.kind.flow else tok.model_max_length
    return tok(list(prompts), padding="max_length", max_length=length, truncation=True,
               return_tensors="pt").input_ids


@torch.no_grad()
def _states(base, prompts):
    """(P, L, D) text-encoder states, as the denoiser receives them, in double precision on the CPU."""
    from erasecli.diffusion.cond import encode_prompts, token_states

    states = token_states(base.denoiser, encode_prompts(base.pipe, prompts, base.device))
    return states.to(solve_device(base), DTYPE)


@torch.no_grad()
def _pooled(base, prompts):
    """(P, Dp) pooled text embeddings, as the denoiser receives them (SDXL's `text_embeds`, Flux's pooled
    projection), double, where the solves run."""
    from erasecli.diffusion.cond import encode_prompts, pooled_of

    return pooled_of(base.denoiser, encode_prompts(base.pipe, prompts, base.device)).to(solve_device(base), DTYPE)


def pooled_edit(recipe, base, concept):
    """The pooled path's edit (uce.pooled, bases whose kind names a `pooled_target`): the same solve as the token
    states', on pooled embeddings: each forget prompt's (c_i) mapped to its guide's (g_i), the retain prompts'
    kept. Only the layer's pooled input columns W_p (its first Dp) change, by W_p P; the time ids' columns stay.
    Returns (module name, W0 (out, in), change D (out, in), report) or None when there is nothing to edit."""
    from erasecli.diffusion.kinds import kind_of

    u, unet = recipe.uce, base.denoiser
    target = kind_of(unet).pooled_target
    if not (u.pooled and target):
        return None
    mod = dict(unet.named_modules()).get(target)
    lin = getattr(mod, "base_layer", mod)
    if not isinstance(lin, torch.nn.Linear):
        return None
    pairs = [(f, g) for f, g in zip(concept.forget, guides_of(u, concept)) if f != g]
    if not pairs:
        return None
    keep = kept_prompts(u, concept)
    C, G = _pooled(base, [f for f, _ in pairs]), _pooled(base, [g for _, g in pairs])
    C_p = _pooled(base, keep) if keep else C.new_zeros(0, C.shape[1])
    P = shared_map(C, G, C_p, u.lam, float(u.erase_scale), u.preserve_scale)
    dp = C.shape[1]
    W0 = lin.weight.detach().to(C.device, DTYPE)
    D = torch.zeros_like(W0)
    D[:, :dp] = W0[:, :dp] @ P
    Wp, Dp = W0[:, :dp], D[:, :dp]
    # how much of the gap from the concept's pooled output to its guide's the edit closes (0: all), and how far
    # the retain prompts' outputs move (relative)
    gap = ((C - G) @ Wp.T).norm()
    left = (C @ (Wp + Dp).T - G @ Wp.T).norm()
    moved = float((C_p @ Dp.T).norm() / (C_p @ Wp.T).norm().clamp_min(1e-30)) if len(C_p) else 0.0
    report = {"module": target, "erased": len(C), "kept": len(C_p), "rank": min(len(C), dp, len(W0)),
              "residual": round(float(left / gap.clamp_min(1e-30)), 6), "retain_change": round(moved, 6)}
    return target, W0, D, report


def erase_pairs(base, forget, guides, tokens: str):
    """(C_e, G_e, rows): the erased token states of the forget prompts and the aligned guide states, (n, D)
    each, and the (n,) mask of the rows up to each prompt's end-of-text token (the concept's own tokens).
    `aligned` says which positions."""
    out = aligned(base, _ids(base, forget), _ids(base, guides), _states(base, forget), _states(base, guides), tokens)
    if out is None:
        raise RecipeError("every forget prompt equals its guide, so there is nothing to erase",
                          hint="set uce.guide to another text, e.g. --set uce.guide=empty")
    return out


def aligned(base, ids_f, ids_g, s_f, s_g, tokens: str):
    """Erased rows of states s_f (J, L, D) of token ids ids_f (J, L) and the guide's rows of s_g at the same
    positions; None when every row equals its guide. Tokens are aligned by position: from the first one where
    a prompt's ids differ from its guide's (earlier states are identical, the text encoder being causal; from the
    first token on a bidirectional encoder such as Flux's T5, where every state sees the concept) to the end of
    the sequence ('padding') or to the prompt's end-of-text token ('concept')."""
    eos = _tokenizer(base).eos_token_id
    causal = base.kind.causal_states
    L = ids_f.shape[1]
    cs, gs, rows = [], [], []
    for j in range(len(ids_f)):
        diff = (ids_f[j] != ids_g[j]).nonzero()
        if len(diff) == 0:  # the prompt is its own guide: nothing to erase
            continue
        k = int(diff[0]) if causal else 0
        at = (ids_f[j] == eos).nonzero()
        concept_end = max(int(at[0]) + 1 if len(at) else L, k + 1)
        end = concept_end if tokens == "concept" else L
        cs.append(s_f[j, k:end])
        gs.append(s_g[j, k:end])
        rows.append(torch.arange(k, end) < concept_end)
    if not cs:
        return None
    return torch.cat(cs), torch.cat(gs), torch.cat(rows).to(s_f.device)


def shared_map(C_e, G_e, C_p, lam: float, s_e, s_p: float):
    """P (in x in) with W - W0 = W0 P for every projection at once, when each target is the projection's own
    output of a guide state (v*_i = W0 g_i): then s_e sum_i (v*_i - W0 c_i) c_i^T = W0 K with
    K = sum_i s_e,i (g_i - c_i) c_i^T, and M does not depend on W0, so P = K M^-1 is solved once."""
    s = torch.as_tensor(s_e, dtype=DTYPE, device=C_e.device)
    s = (s.expand(len(C_e)) if s.ndim == 0 else s).reshape(-1, 1)
    eye = torch.eye(C_e.shape[1], dtype=DTYPE, device=C_e.device)
    M = lam * eye + C_e.T @ (s * C_e) + s_p * (C_p.T @ C_p)
    K = (s * (G_e - C_e)).T @ C_e
    return torch.linalg.solve(M, K.T).T


def factor(D, rank: int):
    """Exact rank-`rank` factors of D: up (out, rank), down (rank, in), up @ down == D to float precision."""
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    r = min(rank, len(S))
    root = S[:r].sqrt()
    up, down = U[:, :r] * root, root[:, None] * Vh[:r]
    if r < rank:  # every module carries the same rank; pad with zeros
        up = torch.cat([up, up.new_zeros(up.shape[0], rank - r)], 1)
        down = torch.cat([down, down.new_zeros(rank - r, down.shape[1])], 0)
    return up, down


def truncated(deltas: dict, rank: int) -> tuple:
    """The best rank-`rank` approximation (SVD, Eckart-Young) of each projection's exact change D (`deltas`:
    {module: W0 P}), as LoRA factors, and each one's relative error ||D - D_rank||_F / ||D||_F:
    ({module: (up, down)}, {module: error})."""
    factors, errors = {}, {}
    for n, D in deltas.items():
        up, down = factor(D, rank)
        factors[n] = (up, down)
        errors[n] = float((D - up @ down).norm() / D.norm().clamp_min(1e-30))
    return factors, errors


def adversarial_states(Ws: dict, W0s: dict, C, mu: float):
    """RECE's closed form: for each row c of C, the state c' with sum_l ||W_l c' - W0_l c||^2 + mu ||c'||^2
    least, over every edited layer l at once."""
    d = C.shape[1]
    A = mu * torch.eye(d, dtype=DTYPE, device=C.device)
    B = torch.zeros(d, d, dtype=DTYPE, device=C.device)
    for n, W in Ws.items():
        A += W.T @ W
        B += W.T @ W0s[n]
    return torch.linalg.solve(A, B @ C.T).T  # (n, d)


def guides_of(u, concept) -> list:
    """What each forget prompt should produce instead, per uce.guide: its anchor, the empty prompt, one text, or
    ('swap:WORD') the prompt with the concept's words replaced by WORD ('a red handwritten digit seven' ->
    'a red handwritten digit zero' for swap:zero): the other attributes of the prompt stay, and the target is
    one thing the concept is not, where an anchor ('a red handwritten digit') may itself draw the concept."""
    if u.guide == "anchor":
        return list(concept.anchor)
    if u.guide.startswith("swap:"):
        from erasecli.attacks.inversion import inverted_prompt
        from erasecli.concepts import tiny_concept

        word = u.guide[len("swap:"):].strip()
        parts = ([tiny_concept(n, concept.kind, concept.world) for n in concept.names] if concept.tiny_world
                 else [concept])
        out = []
        for prompt in concept.forget:
            for part in parts:
                prompt = inverted_prompt(prompt, part, word)
            out.append(prompt)
        return out
    return [""] * len(concept.forget) if u.guide == "empty" else [u.guide] * len(concept.forget)


def kept_prompts(u, concept) -> list:
    """The prompts whose outputs the edit keeps: the retain prompts that are not forget prompts, and the empty
    prompt with uce.preserve_empty."""
    return ([""] if u.preserve_empty else []) + [p for p in concept.retain if p not in set(concept.forget)]


def plan(recipe, base, concept):
    """The states of one edit: erased C_e, their guides' G_e, kept C_p, and the concept-token row mask."""
    u = recipe.uce
    C_e, G_e, rows = erase_pairs(base, list(concept.forget), guides_of(u, concept), u.tokens)
    keep = kept_prompts(u, concept)
    C_p = _states(base, keep).reshape(-1, C_e.shape[1]) if keep else C_e.new_zeros(0, C_e.shape[1])
    return C_e, G_e, C_p, rows


def projected(P, D, r: int):
    """P' with I + P' = (I - U U^T)(I + P), U (in, r) the top right singular vectors of D (rows: erased minus
    guide states): no text state, however found, gives an edited projection output along W0 U any more."""
    U = torch.linalg.svd(D, full_matrices=False)[2][:r].T
    eye = torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    return (eye - U @ U.T) @ (eye + P) - eye


ROUND_ATTACKS = {"inversion": ("inversion",), "prefix": ("prefix",), "both": ("inversion", "prefix")}


def attack_targets(recipe, base, concept) -> torch.Tensor:
    """(J * n, C, h, w) latents of the base's own images of each forget prompt, n = uce.robust_images per
    prompt (drawn through the base's image cache, seeds from attack.seed + 10000 as the attacks' targets): what
    the rounds' attacks reconstruct. Row j * n + i is forget prompt j's image i."""
    from erasecli.data import encode_images
    from erasecli.sampling import cached_generate

    seeds = [recipe.attack.seed + 10_000 + i for i in range(recipe.uce.robust_images)]
    forget = list(concept.forget)
    imgs, _ = cached_generate(base, [p for p in forget for _ in seeds], seeds * len(forget), recipe.sample)
    return encode_images(base, imgs)


@contextmanager
def applied(mods: dict, W0s: dict, P):
    """While inside, each edited projection's weight is W0 + W0 P: the edit in place, restored on exit."""
    old = {n: m.weight.data for n, m in mods.items()}
    try:
        for n, m in mods.items():
            m.weight.data = (W0s[n] + W0s[n] @ P).to(m.weight.device, m.weight.dtype)
        yield
    finally:
        for n, m in mods.items():
            m.weight.data = old[n]


class RoundAttack:
    """One soft-token attack that the robust rounds run on the edited model, warm-started from its last tokens:
    'inversion' (one token in place of the concept's words, shared by every forget prompt) or 'prefix'
    (uce.robust_tokens tokens before each forget prompt). `run` returns the text states it found, aligned
    with the guides' states as the edit's own erased rows are (`aligned`)."""

    def __init__(self, recipe, base, concept, attack: str, z0, gen):
        from erasecli.attacks.prompt import joint_embeddings, pasteable_tokens
        from erasecli.methods.robust import Conditions, soft_positions

        u = recipe.uce
        self.recipe, self.base, self.attack, self.u = recipe, base, attack, u
        forget = list(concept.forget)
        self.cond = Conditions(base, forget)
        ids, self.S, n = soft_positions(self.cond, forget, concept, attack, u.robust_tokens)
        self.ids = ids.to(base.device)
        self.S = self.S.to(base.device)
        E = joint_embeddings(self.cond.tes)[0]
        if attack == "prefix":  # random whole-word tokens, as the prompt attack starts
            allowed = torch.tensor(pasteable_tokens(self.cond.tok))
            self.P = E[allowed[torch.randint(len(allowed), (n,), generator=gen)].to(E.device)].clone()
        else:  # the word the inversion attack starts from
            init = self.cond.tok(recipe.attack.inversion_init, add_special_tokens=False).input_ids
            self.P = E[init].mean(0, keepdim=True).clone()
        guides = guides_of(u, concept)
        self.guide_ids, self.guide_states = _ids(base, guides), _states(base, guides)
        self.z0 = z0
        self.prompt_of = torch.arange(len(forget)).repeat_interleave(len(z0) // len(forget))  # (J * n,)

    def run(self, gen) -> tuple:
        """`uce.robust_steps` Adam steps on the soft tokens against the model as it is now (the edit applied);
        returns (C (m, D), G (m, D), first loss, last loss): the found tokens' text states and their guides'."""
        from erasecli.attacks import denoising_loss
        from erasecli.attacks.prompt import frozen
        from erasecli.diffusion.cond import token_states
        from erasecli.diffusion.noise import schedule_of

        u, pipe, cond = self.u, self.base.pipe, self.cond
        noise = schedule_of(pipe.scheduler, self.base.device)
        P = self.P.clone().requires_grad_(True)
        opt = torch.optim.Adam([P], lr=u.robust_lr)
        losses = []
        with torch.enable_grad(), frozen(pipe.unet, *cond.tes):
            for step in range(u.robust_steps):
                rows = torch.randint(len(self.z0), (u.robust_batch,), generator=gen)
                c = self.prompt_of[rows].to(self.ids.device)
                emb = cond.encode_ids(self.ids[c], self.S[c], P)
                loss = denoising_loss(pipe.unet, noise, self.z0[rows.to(self.z0.device)], emb.to(self.z0.dtype), gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        self.P = P.detach()
        with torch.no_grad():
            states = token_states(pipe.unet, cond.encode_ids(self.ids, self.S, self.P))
        C, G, _ = aligned(self.base, self.ids.cpu(), self.guide_ids, states.to(solve_device(self.base), DTYPE),
                          self.guide_states, self.u.tokens)
        return C, G, losses[0], losses[-1]

    def close(self) -> None:
        self.cond.close()


def edit(recipe, base, concept, rounds: int = 0):
    """Solve the edit (plus `rounds` RECE rounds). Returns ({module: (up, down)}, rank, summary)."""
    u = recipe.uce
    t0 = time.time()
    C_e, G_e, C_p, concept_rows = plan(recipe, base, concept)
    C_a, G_a = C_e[concept_rows], G_e[concept_rows]  # rece re-derives the concept's own tokens' states
    mods = edited_modules(base.denoiser, u.modules)
    if not mods:
        raise RecipeError(f"the base's denoiser has no cross-attention {'/'.join(u.modules)} projection to edit")
    dev = solve_device(base)
    W0s = {n: m.weight.detach().to(dev, DTYPE) for n, m in mods.items()}
    t_prep = time.time() - t0
    erased, targets_of, scales = C_e, G_e, torch.full((len(C_e),), float(u.erase_scale), dtype=DTYPE, device=dev)
    P = shared_map(erased, targets_of, C_p, u.lam, scales, u.preserve_scale)
    history = []
    for r in range(rounds):
        Ws = {n: W0s[n] + W0s[n] @ P for n in W0s}
        adv = adversarial_states(Ws, W0s, C_a, u.rece_lam)
        # how far the derived states bring the edited layers back to the base's output of the concept
        back = sum(float((adv @ Ws[n].T - C_a @ W0s[n].T).norm() ** 2) for n in W0s)
        ref = sum(float((C_a @ W0s[n].T - G_a @ W0s[n].T).norm() ** 2) for n in W0s)
        erased = torch.cat([erased, adv])
        targets_of = torch.cat([targets_of, G_a])
        scales = torch.cat([scales, torch.full((len(adv),), float(u.rece_scale), dtype=DTYPE, device=dev)])
        P = shared_map(erased, targets_of, C_p, u.lam, scales, u.preserve_scale)
        history.append({"round": r + 1, "residual": round((back / max(ref, 1e-30)) ** 0.5, 6),
                        "adv_norm": round(float(adv.norm(dim=1).mean()), 4), "erased": len(erased)})
    robust_log = []
    if u.robust != "none":
        if concept.together and u.robust in ("inversion", "both"):
            raise RecipeError(f"uce.robust {u.robust} learns one token for one concept; {len(concept.names)} "
                              "concepts are erased here", hint="set uce.robust=prefix")
        gen = torch.Generator("cpu").manual_seed(recipe.train.seed)
        z0 = attack_targets(recipe, base, concept)
        attacks = [RoundAttack(recipe, base, concept, a, z0, gen) for a in ROUND_ATTACKS[u.robust]]
        try:
            for r in range(u.robust_rounds):
                row = {"round": r + 1}
                with applied(mods, W0s, P):
                    found = [(a.attack, a.run(gen)) for a in attacks]
                for name, (C, G, first, last) in found:
                    erased, targets_of = torch.cat([erased, C]), torch.cat([targets_of, G])
                    scales = torch.cat([scales, torch.full((len(C),), float(u.robust_scale), dtype=DTYPE, device=dev)])
                    row[name] = {"loss_start": round(first, 5), "loss_end": round(last, 5)}
                P = shared_map(erased, targets_of, C_p, u.lam, scales, u.preserve_scale)
                row["erased"] = len(erased)
                robust_log.append(row)
        finally:
            for a in attacks:
                a.close()
    if u.robust_project:  # the range of every edited projection loses the erasure's main directions
        P = projected(P, erased - targets_of, u.robust_project)
    rank = min(len(erased) + u.robust_project, P.shape[0])
    deltas = {n: W @ P for n, W in W0s.items()}
    pooled = pooled_edit(recipe, base, concept)  # SDXL's pooled path: its own solve, outside the rounds
    if pooled:
        deltas[pooled[0]] = pooled[2]
    errors = None
    if u.rank and u.rank < rank:  # uce.rank: the best rank-N approximation of each projection's change
        factors, errors = truncated(deltas, u.rank)
        rank = u.rank
    else:
        if pooled:  # every module carries one rank: the larger of the two edits'
            rank = max(rank, pooled[3]["rank"])
        right, down = factor(P, rank)  # P = right @ down, so W0 P = (W0 right) @ down: one SVD for every module
        factors = {n: (W @ right, down) for n, W in W0s.items()}
        if pooled:
            factors[pooled[0]] = factor(pooled[2], rank)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.time() - t0
    err = max(float((up @ down - deltas[n]).abs().max() / deltas[n].abs().max().clamp_min(1e-30))
              for n, (up, down) in factors.items())
    summary = {"edit_seconds": round(seconds, 4), "encode_seconds": round(t_prep, 4),
               "modules": len(factors), "rank": rank, "erased_states": len(C_e), "kept_states": len(C_p),
               "factor_rel_error": err,
               "relative_change": round(max(float(deltas[n].norm() / W0s[n].norm()) for n in W0s), 6)}
    if pooled:
        summary["pooled"] = pooled[3] | {"relative_change": round(float(pooled[2].norm() / pooled[1].norm()), 6)}
    if rounds:
        summary["rece_rounds"] = history
    if robust_log:
        summary["robust_rounds"] = robust_log
    if errors is not None:
        summary["truncation"] = {"rank": rank, "max_relative_error": round(max(errors.values()), 6),
                                 "relative_error": {n: round(e, 6) for n, e in errors.items()}}
    return factors, rank, summary


def write_factors(unet, factors: dict, dtype=torch.float32) -> None:
    """Set the factors of the LoRA attached on the edited modules (erasecli.methods.adapter.attached, alpha =
    rank: scale 1): lora_B = up, lora_A = down."""
    from peft.tuners.lora import LoraLayer

    for n, m in unet.named_modules():
        if isinstance(m, LoraLayer) and n in factors:
            up, down = factors[n]
            m.lora_A["default"].weight.data = down.to(m.lora_A["default"].weight.device, dtype).contiguous()
            m.lora_B["default"].weight.data = up.to(m.lora_B["default"].weight.device, dtype).contiguous()
    missing = set(factors) - {n for n, m in unet.named_modules() if isinstance(m, LoraLayer)}
    if missing:
        raise RuntimeError(f"LoRA was not attached to {sorted(missing)[:2]}")


class Uce(ClosedForm):
    name = "uce"
    kinds = ("sd", "sdxl", "flux")

    @classmethod
    def edit(cls, recipe, base, concept):
        return edit(recipe, base, concept)


class Rece(ClosedForm):
    name = "rece"
    kinds = ("sd", "sdxl", "flux")

    @classmethod
    def edit(cls, recipe, base, concept):
        return edit(recipe, base, concept, rounds=recipe.uce.rounds)
