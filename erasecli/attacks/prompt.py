"""prompt: UnlearnDiffAtk (Zhang et al., ECCV 2024) - k adversarial prefix tokens found against the *erased*
model's own denoising loss, then pasted as plain text. docs/methods.md, "Attacks".

For each forget prompt c that does not already succeed, with x_0 the base's target images of c:

    minimise over the prefix P:  E_{t, eps} || eps_theta'(gamma_t x_0 + sigma_t eps, t, [P; c]) - eps ||^2

where theta' is the erased model (base + deltas) and t is drawn uniformly over the whole schedule. The prefix
is optimised PEZ-style (Wen et al. 2023) rather than as relaxed one-hot vectors over the vocabulary: continuous
embeddings `cont` (k, D) are kept, the loss is evaluated at their nearest real token embeddings (cosine), and
the gradient there updates `cont` (straight-through). Why: a soft mixture of 49,408 token embeddings is an
input the text encoder never saw (on the tiny base only a few dozen tokens were ever trained), so the soft
optimum and the discretised prompt behave differently; evaluated at real tokens, what is optimised is what
is pasted. The tokens are whole words that paste back as themselves (`pasteable_tokens`). Every
`attack.prompt_check_every` steps and at the end, the prefix is decoded to text, prepended to
c, sampled and judged; the attack stops at its first success. Restarts begin from other random tokens.

Code names: `cont` the continuous prefix, `E` the token embedding table, `ids` the projected tokens, `z0` the
target latents (x_0), `ab` alpha_bar_t.

On SDXL a token has an embedding in each text encoder: `cont` is the two side by side (k, D1 + D2), the
nearest token is the one nearest in both (the mean of the two cosines), and each encoder's prefix is its half.
On Flux the same holds for CLIP (the pooled embedding) and T5 (the token states), over the words that are one
token in both vocabularies (`pasteable_words`); T5's prefix starts at position 0 (it has no BOS).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

import torch

from erasecli.attacks import Attack, AttackContext, AttackOutcome
from erasecli.diffusion.cond import encode_ids, text_encoders, token_embedding, token_length, tokenizers


@contextmanager
def frozen(*modules):
    """No parameter of `modules` takes a gradient inside; the flags come back as they were."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextmanager
def prefix_embeddings(text_encoder, k: int, start: int = 1):
    """While inside, the text encoder's token embeddings at positions start..start + k - 1 are `slot[0]` (start 1:
    right after CLIP's BOS; 0 for T5, which has none)."""
    slot = [None]

    def hook(module, args, out):  # out: (B, L, D)
        if slot[0] is None:
            return out
        out = out.clone()
        out[:, start : start + k] = slot[0].to(out.dtype)
        return out

    handle = token_embedding(text_encoder).register_forward_hook(hook)
    try:
        yield slot
    finally:
        handle.remove()


def prefixed_ids(tokenizer, prompt: str, k: int, filler: int, length: int | None = None) -> torch.Tensor:
    """[BOS, filler x k, prompt tokens, EOS, pad...] at `length` (default the tokenizer's model_max_length); no BOS
    for a tokenizer without one (T5).  (1, L)"""
    L = length or tokenizer.model_max_length
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    body = tokenizer(prompt, add_special_tokens=False).input_ids[: L - 1 - len(bos) - k]
    ids = bos + [filler] * k + body + [tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (L - len(ids))
    return torch.tensor([ids])


def pasteable_tokens(tokenizer) -> list[int]:
    """Token ids that survive being pasted: whole words (BPE's end-of-word form) of letters or digits that the
    tokenizer turns back into exactly that one token. Other pieces glue onto their neighbours when the prefix
    is decoded to text, and the prompt people paste would then tokenise differently (and, on the tiny base's
    16-token context, longer than it fits)."""
    vocab = tokenizer.get_vocab()
    words = {i: t[:-4] for t, i in vocab.items() if t.endswith("</w>") and t[:-4].isalnum()}
    ids = sorted(words)
    back = tokenizer([words[i] for i in ids], add_special_tokens=False).input_ids
    return [i for i, b in zip(ids, back) if b == [i]]


def pasteable_words(tokenizers) -> torch.Tensor:
    """Words that paste back as one token in every tokenizer: (W, n) ids, column i tokenizer i's, rows in the
    first tokenizer's id order. SD and SDXL: CLIP's `pasteable_tokens` (SDXL's two tokenizers share its
    vocabulary, so both columns agree); Flux: those that T5 also reads as exactly one piece."""
    first = tokenizers[0]
    ids = pasteable_tokens(first)
    words = [t[:-4] for t in first.convert_ids_to_tokens(ids)]  # strip BPE's end-of-word mark
    cols = [ids]
    for tk in tokenizers[1:]:
        back = tk(words, add_special_tokens=False).input_ids if words else []
        cols.append([b[0] if len(b) == 1 else -1 for b in back])
    table = torch.tensor(cols, dtype=torch.long).T.reshape(len(ids), len(cols))
    return table[(table >= 0).all(-1)]


def word_embeddings(encoders, words: torch.Tensor) -> tuple:
    """Each word's input embeddings, the encoders' side by side, and each encoder's width: (W, D), [D_i].
    A soft word is one row of it; encoder i reads its own share (SDXL, Flux: D1 + D2)."""
    Es = [te.get_input_embeddings().weight.detach().float()[words[:, i]] for i, te in enumerate(encoders)]
    return torch.cat(Es, dim=-1), [e.shape[1] for e in Es]


def joint_embeddings(encoders) -> tuple:
    """Every token's input embedding with the encoders' side by side, and each encoder's width: (V, D), [D_i].
    A soft token is one row of it; encoder i reads its own share (SDXL: D1 + D2)."""
    Es = [te.get_input_embeddings().weight.detach().float() for te in encoders]
    return torch.cat(Es, dim=-1), [e.shape[1] for e in Es]


def unit_parts(x: torch.Tensor, widths) -> torch.Tensor:
    """Rows with each encoder's part (widths along the last dim) scaled to unit length, the whole divided by
    sqrt(parts): the dot product of two such rows is the mean of the parts' cosines (one part: the cosine)."""
    parts = [torch.nn.functional.normalize(p, dim=-1) for p in x.split(list(widths), dim=-1)]
    return torch.cat(parts, dim=-1) / len(parts) ** 0.5


def nearest_tokens(cont: torch.Tensor, E_unit: torch.Tensor, allowed: torch.Tensor, widths=None) -> torch.Tensor:
    """The real token nearest (by cosine; on SDXL the mean of the two encoders' cosines) to each row of `cont`
    among `allowed` ids; E_unit is `unit_parts` of the embedding table.  (k,)"""
    widths = widths or [cont.shape[-1]]
    sim = unit_parts(cont, widths) @ E_unit[allowed].T  # (k, |allowed|)
    return allowed[sim.argmax(-1)]


class PromptAttack(Attack):
    name = "prompt"

    def run(self, ctx: AttackContext) -> AttackOutcome:
        t0 = time.time()
        a, pipe = ctx.recipe.attack, ctx.base.pipe
        encs, toks = text_encoders(pipe), tokenizers(pipe)
        words = pasteable_words(toks).to(ctx.device)  # (W, n_tok)
        E, widths = word_embeddings(encs, words)  # (W, D); SDXL, Flux: D1 + D2
        E_unit = unit_parts(E, widths)
        k, steps = a.prompt_tokens, ctx.steps(a.prompt_steps)
        restarts = ctx.steps(a.prompt_restarts)
        success, adversarial, images = list(ctx.pre), [""] * len(ctx.forget), list(ctx.pre_images)
        todo = [j for j in range(len(ctx.forget)) if not ctx.pre[j]]
        starts = [int(tk.bos_token_id is not None) for tk in toks]  # where the prefix goes: after BOS, if any
        with frozen(ctx.base.denoiser, *encs), ExitStack() as stack:
            slots = [stack.enter_context(prefix_embeddings(te, k, st)) for te, st in zip(encs, starts)]
            for r in range(restarts):
                left = [j for j in todo if not success[j]]
                for i in range(0, len(left), a.prompt_batch):
                    self._restart(ctx, left[i : i + a.prompt_batch], r, slots, words, E, E_unit, widths, steps,
                                  success, adversarial, images)
        return AttackOutcome(self.name, list(ctx.forget), list(ctx.pre), success, adversarial, images,
                             seconds=time.time() - t0,
                             extra={"tokens": k, "steps": steps, "restarts": restarts, "lr": a.prompt_lr,
                                    "attacked": len(todo), "words": len(words),
                                    "optimiser": "PEZ (projected embeddings), Adam"})

    @staticmethod
    def _restart(ctx, group, r, slots, words, E, E_unit, widths, steps, success, adversarial, images):
        """Restart r of the attack on the forget prompts `group`, all in one batch: each prompt keeps its own
        prefix, random draws (its generator, seeded as if it ran alone) and Adam moments (Adam is elementwise and
        the loss is the sum of the prompts' own losses), and leaves the batch at its first success. Fills
        success, adversarial and images at those prompts."""
        a, pipe, toks = ctx.recipe.attack, ctx.base.pipe, tokenizers(ctx.base.pipe)
        k, every = a.prompt_tokens, a.prompt_check_every
        everyone = torch.arange(len(words), device=E.device)

        def put(v):  # (P, k, D) -> each encoder's share; None clears
            for s, part in zip(slots, v.split(widths, dim=-1) if v is not None else [None] * len(slots)):
                s[0] = part

        ids = [torch.cat([prefixed_ids(tk, ctx.forget[j], k, filler=int(words[0, i]), length=token_length(pipe, tk))
                          for j in group]).to(ctx.device) for i, tk in enumerate(toks)]  # per tokenizer (P, L)
        gens, first = [], []
        for j in group:
            gens.append(torch.Generator("cpu").manual_seed(a.seed + 7919 * j + r))
            first.append(E[torch.randint(len(words), (k,), generator=gens[-1]).to(E.device)])
        cont = torch.nn.Parameter(torch.stack(first))  # (P, k, D)
        z_all = ctx.targets[group].to(ctx.device)  # (P, n_t, C, h, w): the base's images of each prompt
        opt = torch.optim.Adam([cont], lr=a.prompt_lr)
        live = list(range(len(group)))  # rows of `cont` still attacked
        for step in range(steps):
            rows = torch.tensor(live, device=E.device)
            x = cont[rows]
            w = nearest_tokens(x.detach().flatten(0, 1), E_unit, everyone, widths).view(len(live), k)  # word rows
            put(x + (E[w] - x).detach())  # forward at real words, gradient to cont
            c_adv = encode_ids(pipe, [t[rows] for t in ids])  # (P, L, D); SDXL, Flux (P, L + 1, D)
            z0 = z_all[rows].flatten(0, 1)  # (P n_t, C, h, w)
            loss = ctx.denoising_loss(z0, c_adv.repeat_interleave(z_all.shape[1], 0), [gens[q] for q in live])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # a row whose prompt left gets a zero gradient (Adam's momentum may still move it: unread)
            opt.step()
            put(None)
            if (step + 1) % every and step != steps - 1:
                continue
            x = cont.detach()[rows]
            w = nearest_tokens(x.flatten(0, 1), E_unit, everyone, widths).view(len(live), k)
            texts = [f"{toks[0].decode(words[w[q], 0].tolist()).strip()} {ctx.forget[group[i]]}"
                     for q, i in enumerate(live)]
            drawn = ctx.draw(texts)  # judged as pasted: the text, not the ids
            for i, text, imgs in zip(list(live), texts, drawn):
                j = group[i]
                adversarial[j], images[j] = text, imgs
                if ctx.succeeds(imgs):
                    success[j] = True
                    live.remove(i)
            if not live:
                break
