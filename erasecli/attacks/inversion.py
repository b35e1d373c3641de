"""inversion: concept inversion (Pham et al., ICLR 2024) - one new token (or `attack.num_vectors`) learned on
the *erased* model from the base's images of the concept, everything else frozen. docs/methods.md, "Attacks".

    minimise over v:  E_{(x_0, c), t, eps} || eps_theta'(gamma_t x_0 + sigma_t eps, t, c[concept -> v]) - eps ||^2

over the base's target images x_0 of each forget prompt c, with the concept's words in c replaced by the new
token. The token is added with diffusers' own `load_textual_inversion` (so the prompts that score it are what
`pipe.load_textual_inversion(file)` gives a user) and starts from the embedding of `attack.inversion_init`;
only its vector(s) are trained. Then each forget prompt, with the concept's words replaced by the token, is
sampled and judged. The embedding is returned in diffusers' textual-inversion format ({token: (n, D)}); on
SDXL the token has a vector in each text encoder, learned together, returned as {"clip_l": (n, D1),
"clip_g": (n, D2)} (the layout SDXL embeddings are shared in); on Flux one in CLIP (the pooled embedding) and
one in T5 (the token states), {"clip_l": ..., "t5": ...} (the layout of diffusers' Flux pivotal-tuning script:
each half loads with `pipe.load_textual_inversion(part, token=..., text_encoder=pipe.text_encoder[_2],
tokenizer=pipe.tokenizer[_2])`). The two vocabularies give the token different ids; each encoder's hook
reads its own.
"""

from __future__ import annotations

import re
import time

import torch

from erasecli.attacks import Attack, AttackContext, AttackOutcome
from erasecli.attacks.prompt import frozen
from erasecli.diffusion.cond import encode_ids, prompt_ids, rows_of, text_encoders, token_embedding, tokenizers
from erasecli.errors import UsageError


def token_name(concept) -> str:
    return "<" + re.sub(r"[^a-z0-9]+", "-", concept.name.lower()).strip("-") + "-inverted>"


def inverted_prompt(prompt: str, concept, token: str) -> str:
    """The prompt with the concept's words replaced by the learned token: 'a red handwritten digit three' ->
    'a red handwritten digit <digit-3-inverted>'; on the tiny world the word and the numeral of a digit, or a
    colour's name; elsewhere the concept's name."""
    if concept.tiny_world:
        from erasecli.concepts import label_words

        words = label_words(concept.kind, concept.target)
    else:
        words = [concept.name]
    for w in words:
        prompt = re.sub(rf"(?<![\w-]){re.escape(w)}(?![\w-])", token, prompt, flags=re.I)
    return prompt


class Inversion(Attack):
    name = "inversion"

    def run(self, ctx: AttackContext) -> AttackOutcome:
        t0 = time.time()
        a, pipe = ctx.recipe.attack, ctx.base.pipe
        kind, encs, toks = ctx.base.kind, text_encoders(pipe), tokenizers(pipe)
        token = token_name(ctx.concept)
        inits = []
        for te, tk in zip(encs, toks):  # each encoder's embedding of the init words, averaged  (D_i,)
            init_ids = tk(a.inversion_init, add_special_tokens=False).input_ids or [tk.bos_token_id or tk.unk_token_id]
            inits.append(te.get_input_embeddings().weight[init_ids].detach().float().mean(0))
        names = [token] + [f"{token}_{i}" for i in range(1, a.num_vectors)]
        loaded = []
        try:
            for te, tk, init in zip(encs, toks, inits):
                pipe.load_textual_inversion({token: init.repeat(a.num_vectors, 1)}, token=token, tokenizer=tk,
                                            text_encoder=te)
                loaded.append((te, tk))
            embs = [token_embedding(te) for te in encs]  # resized by the load: new modules
            ids_new = [tk.convert_tokens_to_ids(names) for tk in toks]  # the token's ids in each vocabulary
            if kind.shared_vocabulary and any(i != ids_new[0] for i in ids_new):
                raise UsageError("the base's two tokenizers gave the inverted token different ids",
                                 hint="the inversion attack needs SDXL tokenizers with one vocabulary")
            ids_new = [torch.tensor(i, device=ctx.device) for i in ids_new]
            texts = [inverted_prompt(p, ctx.concept, token) for p in ctx.forget]
            ids = prompt_ids(pipe, [pipe.maybe_convert_prompt(t, toks[0]) for t in texts], ctx.device)  # (N, L_i)
            z0 = ctx.targets.to(ctx.device)  # (N, n_t, C, h, w)
            n, n_t = z0.shape[:2]
            vs = [init.repeat(a.num_vectors, 1).clone().to(ctx.device).requires_grad_(True)
                  for init in inits]  # (n_vec, D_i) per encoder
            opt = torch.optim.Adam(vs, lr=a.inversion_lr)
            gen = torch.Generator("cpu").manual_seed(a.seed + 1)
            steps = ctx.steps(a.inversion_steps)

            def hook_for(v, new):
                def hook(module, args, out):  # the new tokens' rows come from v, so only v takes the gradient
                    mask = (args[0][..., None] == new).any(-1)  # (B, L)
                    if not mask.any():
                        return out
                    which = (args[0][..., None] == new).float().argmax(-1)  # (B, L) index into v
                    return torch.where(mask[..., None], v[which].to(out.dtype), out)
                return hook

            handles = [emb.register_forward_hook(hook_for(v, new)) for emb, v, new in zip(embs, vs, ids_new)]
            losses = []
            try:
                with frozen(ctx.base.denoiser, *encs):
                    for _ in range(steps):
                        rows = torch.randint(n * n_t, (a.inversion_batch,), generator=gen)
                        j, i = rows // n_t, rows % n_t
                        x0 = z0[j.to(ctx.device), i.to(ctx.device)]  # (B, C, h, w)
                        c = encode_ids(pipe, rows_of(ids, j.to(ctx.device)))  # (B, L, D); SDXL, Flux (B, L + 1, D)
                        loss = ctx.denoising_loss(x0, c, gen)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        losses.append(loss.item())
            finally:
                for h in handles:
                    h.remove()
            with torch.no_grad():
                for emb, v, new in zip(embs, vs, ids_new):
                    emb.weight[new] = v.detach().to(emb.weight.dtype)
            drawn = ctx.draw(texts)  # through the pipeline, which expands a multi-vector token itself
            success = [bool(p) or ctx.succeeds(imgs) for p, imgs in zip(ctx.pre, drawn)]
        finally:
            for te, tk in loaded:
                pipe.unload_textual_inversion(tokenizer=tk, text_encoder=te)
        vecs = [v.detach().float().cpu() for v in vs]
        embedding = {token: vecs[0]} if len(vecs) == 1 else dict(zip(kind.embedding_keys, vecs))
        return AttackOutcome(self.name, list(ctx.forget), list(ctx.pre), success, texts, drawn,
                             seconds=time.time() - t0, embedding=embedding,
                             extra={"token": token, "num_vectors": a.num_vectors, "steps": steps,
                                    "lr": a.inversion_lr, "init": a.inversion_init,
                                    "loss_first": round(sum(losses[:10]) / max(1, len(losses[:10])), 5),
                                    "loss_last": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 5)})
