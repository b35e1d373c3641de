"""Robust erasure: adversarial training against the concept coming back (the recipe's `robust` section), and the
text-encoder LoRA (`lora.text_encoder`). docs/methods.md, "Robust erasure".

After AdvUnlearn (Zhang et al., NeurIPS 2024): a min-max game between an inner attack and the method's step.
Every `robust.every` steps after `robust.warmup`, on the model being trained (theta, the base + the adapter):

    inner:  P* = argmin_P  E_{(x_0, j), t, eps} || eps_theta(gamma_t x_0 + sigma_t eps, t, te(c_j[P])) - eps ||^2
    outer:  the method's own step, with a share `robust.mix` of the forget images conditioned on te(c_j[P*])
            instead of te(c_j); the method's retain term keeps the other prompts

where x_0 are the base's forget images of forget prompt j (the training data), and c_j[P] is prompt j's tokens
with soft (continuous) token embeddings P put in: `robust.attack: prefix` puts `robust.tokens` of them before
the prompt, one set per prompt (AdvUnlearn's attack, UnlearnDiffAtk's objective); `inversion` puts one vector,
shared by all prompts, in place of the concept's words (concept inversion's attack). The loss is the attacks'
own `denoising_loss` (erasecli.attacks), so the inner attack is the prompt / inversion attack's objective, kept
soft (no projection to real tokens: the worst case in embedding space) and warm-started from the last P, for
`robust.attack_steps` Adam steps at `robust.attack_lr`.

Conditions are token ids plus soft-token overrides; row i < len(data.prompts) is prompt i as is, row
len(data.prompts) + j the adversarial version of forget prompt j. With the adapter on the UNet alone and cached
text embeddings, each inner attack writes its rows' states into `data.embeds` and the methods run unchanged;
with `lora.text_encoder` every step encodes its conditions through the text encoder (and its adapter) afresh.

Code names: `S` (rows, L) the override map (-1: the token's own embedding; else a row of the soft tokens `P`, which
on SDXL is both encoders' embeddings side by side, D1 + D2, each encoder taking its share),
`row_prompt` (N,) which forget prompt each forget image belongs to, `plain_c` the forget images' own prompts.
"""

from __future__ import annotations

import time

import torch

from erasecli.errors import RecipeError
from erasecli.methods.adapter import has_adapter

FILLERS = ("cat", "dog")  # two one-token words: where their tokenisations differ is where a soft token goes


def check(recipe, cls) -> None:
    """What robust training and the text-encoder adapter cannot do, before any model loads: the method class's
    capability flags decide (erasecli.methods.Method)."""
    r = recipe.robust
    for asked, what, able in ((r.enabled, "robust.enabled", cls.supports_robust),
                              (recipe.lora.text_encoder, "lora.text_encoder", cls.supports_text_encoder)):
        if asked and not able:
            from erasecli.methods import METHODS

            can = [n for n, m in METHODS.items() if m.supports_robust and m.supports_text_encoder]
            hint = ("the closed form has its own: --set uce.robust=inversion (attack-and-re-solve rounds) or "
                    f"uce.robust_project=2; or train with {', '.join(can)}"
                    if cls.closed_form else f"use {', '.join(can)} for robust erasure")
            raise RecipeError(f"{what} is not supported by {cls.name}: {cls.why_not_robust}", hint=hint)


class Conditions:
    """Token ids and soft-token overrides of every condition a step may use; `encode(rows, P)` -> (B, L, D).

    A condition row's ids are one tokenizer's (SD; SDXL, whose two tokenizers share CLIP's vocabulary and both
    read them) or, where the vocabularies differ (Flux: CLIP, T5), each tokenizer's ids side by side along the
    row, (P, L_1 + L_2): every caller indexes rows as before, and `encode_ids` splits a row into its pieces."""

    def __init__(self, base, prompts: list):
        from erasecli.diffusion.cond import id_tokenizers, text_encoders, token_embedding, token_length

        pipe = self.pipe = base.pipe
        self.tok, self.te, self.device = pipe.tokenizer, pipe.text_encoder, base.device
        self.tes = text_encoders(pipe)  # SDXL, Flux: both, and a soft token is one row split across them
        self.widths = [te.get_input_embeddings().embedding_dim for te in self.tes]  # word_embeddings' order
        self.toks = id_tokenizers(pipe)  # the tokenizers whose ids a row holds, side by side
        self.piece = [min(i, len(self.toks) - 1) for i in range(len(self.tes))]  # encoder i reads piece i (or the one)
        self.enc_toks = [self.toks[p] for p in self.piece]  # the tokenizer whose ids each encoder reads
        self.lengths = [token_length(pipe, tk) for tk in self.toks]
        self.ids = self.tokenize(prompts)  # (P, L)
        self.S = torch.full_like(self.ids, -1)
        self.P = None  # (n, sum(widths)) soft tokens, when there are adversarial rows
        # a text-encoder LoRA is being trained (on SDXL: on either encoder)
        self.trains = any(p.requires_grad for te in self.tes for p in te.parameters())
        self._slot = None
        self._hooks = [token_embedding(te).register_forward_hook(self._override(i))
                       for i, te in enumerate(self.tes)]

    def tokenize(self, texts: list) -> torch.Tensor:
        from erasecli.diffusion.cond import prompt_ids

        ids = prompt_ids(self.pipe, texts, self.device)
        return torch.cat(ids, dim=1) if isinstance(ids, list) else ids

    def pieces(self, x) -> list:
        """A row tensor (B, L, ...) split into its tokenizers' pieces along L."""
        return list(x.split(self.lengths, dim=1))

    def _override(self, i: int):
        def hook(module, args, out):  # out: (B, L_i, D_i), encoder i's token embeddings
            if self._slot is None:
                return out
            masks, vals = self._slot
            vals = vals[self.piece[i]].split(self.widths, dim=-1)[i]
            return torch.where(masks[self.piece[i]][..., None], vals.to(out.dtype), out)
        return hook

    def encode_ids(self, ids, S, P):
        """Text-encoder states of ids (B, L) with the soft tokens P put where S >= 0."""
        from erasecli.diffusion.cond import encode_ids

        return self._with_soft(encode_ids, ids, S, P)

    def pooled_ids(self, ids, S, P):
        """The pooled embeddings (B, Dp) of ids with the soft tokens P put where S >= 0 (what critic-rl's critic
        reads as c)."""
        from erasecli.diffusion.cond import pooled_ids

        return self._with_soft(pooled_ids, ids, S, P)

    def _with_soft(self, fn, ids, S, P):
        per = self.pieces(ids) if len(self.lengths) > 1 else ids
        mask = S >= 0
        if P is None or not bool(mask.any()):
            return fn(self.pipe, per)
        self._slot = (self.pieces(mask), self.pieces(P[S.clamp(min=0)]))
        try:
            return fn(self.pipe, per)
        finally:
            self._slot = None

    def encode(self, c):
        """Condition rows c (B,) with the current soft tokens (no gradient to them; the adapters' flows)."""
        c = c.to(self.ids.device)
        P = None if self.P is None else self.P.detach()
        with torch.set_grad_enabled(self.trains and torch.is_grad_enabled()):
            return self.encode_ids(self.ids[c], self.S[c], P)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def fillers(cond) -> tuple:
    """Two words that are one token in every tokenizer of the base: where the tokenisations of a text with one
    and with the other differ is where a soft token goes. "cat" and "dog" where they are (CLIP), else the first
    two words of both vocabularies (tiny-flux's T5 knows the world's words only)."""
    from erasecli.attacks.prompt import pasteable_words

    if all(len(tk(w, add_special_tokens=False).input_ids) == 1 for w in FILLERS for tk in cond.toks):
        return FILLERS
    words = pasteable_words(cond.toks)[:2, 0].tolist()
    return tuple(cond.toks[0].convert_ids_to_tokens(words[i])[:-4] for i in range(2))


def soft_positions(cond: Conditions, texts: list, concept, attack: str, tokens: int = 1):
    """Adversarial token ids (J, L), the override map S (J, L) and the soft tokens' count for `attack`: 'prefix'
    (`tokens` soft tokens before each text, one set per text) or 'inversion' (one shared soft token in place of
    the concept's words). Where a row holds several tokenizers' ids (Flux), each piece gets the same soft
    tokens at its own positions (T5 has no BOS: its prefix starts at 0)."""
    from erasecli.attacks.inversion import inverted_prompt
    from erasecli.attacks.prompt import prefixed_ids

    rows, maps = [], []
    if attack == "prefix":
        k = tokens
        for j, text in enumerate(texts):
            ids, S = [], []
            for tk, n in zip(cond.toks, cond.lengths):
                start = int(tk.bos_token_id is not None)
                piece = prefixed_ids(tk, text, k, filler=tk.bos_token_id or tk.pad_token_id, length=n)[0]
                m = torch.full_like(piece, -1)
                m[start : start + k] = torch.arange(j * k, (j + 1) * k)
                ids.append(piece)
                S.append(m)
            rows.append(torch.cat(ids))
            maps.append(torch.cat(S))
        return torch.stack(rows), torch.stack(maps), len(texts) * k
    words = fillers(cond)
    for text in texts:  # inversion: one shared vector where the concept's words were
        a, b = (cond.tokenize([inverted_prompt(text, concept, w)])[0].cpu() for w in words)
        where = a != b
        if not where.any():  # a prompt without the concept's words (a user folder's caption): a prefix
            ids, S, _ = soft_positions(cond, [text], concept, "prefix", 1)
            a, where = ids[0], S[0] >= 0
        S = torch.where(where, torch.zeros_like(a), torch.full_like(a, -1))
        rows.append(a)
        maps.append(S)
    return torch.stack(rows), torch.stack(maps), 1


class Adversary:
    """The inner attack and what it changes in the data; `before_step(k)` runs it when it is due."""

    def __init__(self, ctx, cond: Conditions):
        from erasecli.attacks.prompt import pasteable_words, word_embeddings

        self.ctx, self.cond, self.cfg = ctx, cond, ctx.recipe.robust
        d, concept = ctx.data, ctx.data.sets
        if self.cfg.attack == "inversion" and concept.together:
            raise RecipeError("robust.attack inversion learns one token for one concept; "
                              f"{len(concept.names)} concepts are erased here", hint="set robust.attack=prefix")
        self.plain_c = d.forget_c.clone()
        self.n_plain = len(d.prompts)
        plain_rows = list(dict.fromkeys(int(i) for i in self.plain_c))  # each forget prompt's own condition row
        texts = [d.prompts[i] for i in plain_rows]
        index = {i: j for j, i in enumerate(plain_rows)}
        self.row_prompt = torch.tensor([index[int(i)] for i in self.plain_c], device=d.forget_c.device)
        ids, S, n = soft_positions(cond, texts, concept, self.cfg.attack, self.cfg.tokens)
        cond.ids = torch.cat([cond.ids, ids.to(cond.ids.device)])
        cond.S = torch.cat([cond.S, S.to(cond.S.device)])
        if self.cfg.attack == "prefix":  # random whole words, as the prompt attack starts
            words = pasteable_words(cond.enc_toks)
            E = word_embeddings(cond.tes, words.to(cond.ids.device))[0]  # (W, sum(widths))
            start = torch.randint(len(words), (n,), generator=ctx.gen)
            cond.P = E[start.to(E.device)].clone()
        else:  # the word the inversion attack starts from, in each encoder
            init = ctx.recipe.attack.inversion_init
            cond.P = torch.cat([te.get_input_embeddings().weight.detach().float()[
                tk(init, add_special_tokens=False).input_ids].mean(0) for te, tk in zip(cond.tes, cond.enc_toks)])[
                None].clone()
        self.rows_adv = self.n_plain + torch.arange(len(texts), device=cond.ids.device)  # condition rows
        self.adv_row = {t: int(r) for t, r in zip(texts, self.rows_adv)}  # forget prompt -> its adversarial row
        if ctx.encode is None:  # cached states: the adversarial rows live in data.embeds too
            d.embeds = torch.cat([d.embeds, d.embeds[plain_rows]])
        self.log: list[dict] = []
        self.seconds = 0.0

    def due(self, k: int) -> bool:
        return k >= self.cfg.warmup and (k - self.cfg.warmup) % self.cfg.every == 0

    def before_step(self, k: int) -> dict:
        """Run the inner attack if step k is due; returns the log row's additions."""
        if not self.due(k):
            return {}
        from erasecli.attacks import denoising_loss
        from erasecli.attacks.prompt import frozen

        t0 = time.perf_counter()
        ctx, cfg, cond, d = self.ctx, self.cfg, self.cond, self.ctx.data
        P = cond.P.clone().requires_grad_(True)
        opt = torch.optim.Adam([P], lr=cfg.attack_lr)
        losses = []
        with frozen(ctx.unet, *cond.tes):  # only the soft tokens take gradients
            for _ in range(cfg.attack_steps):
                rows = torch.randint(len(self.row_prompt), (cfg.attack_batch,), generator=ctx.gen).to(ctx.device)
                c = self.rows_adv[self.row_prompt[rows]]
                emb = cond.encode_ids(cond.ids[c], cond.S[c], P)
                loss = denoising_loss(ctx.unet, ctx.noise, d.forget[rows], emb.to(d.forget.dtype), ctx.gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        cond.P = P.detach()
        if ctx.encode is None:
            with torch.no_grad():
                d.embeds[self.rows_adv] = cond.encode_ids(cond.ids[self.rows_adv], cond.S[self.rows_adv],
                                                          cond.P).float()
        pick = (torch.rand(len(self.plain_c), generator=ctx.gen) < cfg.mix).to(self.plain_c.device)
        d.forget_c = torch.where(pick, self.rows_adv[self.row_prompt], self.plain_c)
        dt = time.perf_counter() - t0
        self.seconds += dt
        entry = {"step": k + 1, "adv_loss_start": round(losses[0], 5), "adv_loss_end": round(losses[-1], 5),
                 "seconds": round(dt, 3)}
        self.log.append(entry)
        return {"adv_loss_start": losses[0], "adv_loss_end": losses[-1]}

    def summary(self) -> dict:
        cfg = self.cfg
        return {"robust": {"attack": cfg.attack, "tokens": cfg.tokens if cfg.attack == "prefix" else 1,
                           "refreshes": len(self.log), "attack_seconds": round(self.seconds, 2),
                           "text_encoder_lora": has_adapter(self.cond.te), "first": self.log[:1],
                           "last": self.log[-1:]}}

    def state_dict(self) -> dict:
        d = self.ctx.data
        out = {"P": self.cond.P.cpu(), "forget_c": d.forget_c.cpu(), "log": list(self.log), "seconds": self.seconds}
        if self.ctx.encode is None:
            out["embeds"] = d.embeds[self.rows_adv].cpu()
        return out

    def load_state_dict(self, state: dict) -> None:
        d, dev = self.ctx.data, self.ctx.device
        self.cond.P = state["P"].to(dev)
        d.forget_c = state["forget_c"].to(dev)
        self.log, self.seconds = list(state["log"]), state["seconds"]
        if "embeds" in state:
            d.embeds[self.rows_adv] = state["embeds"].to(dev)
