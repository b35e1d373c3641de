"""inversion: concept inversion (Pham et al., ICLR 2024) - one new token (or `attack.num_vectors`) learned on
the *erased* model from the base's images of the concept, everything else frozen. docs/methods.md, "Attacks".

    minimise over v:  E_{(x_0, c), t, eps} || eps_theta'(gamma_t x_0 + sigma_t eps, t, c[concept -> v]) - eps ||^2

over the base's target images x_0 of each forget prompt c, with the concept's words in c replaced by the new
token. The token is added with diffusers' own `load_textual_inversion` (so the prompts that score it are what
`pipe.load_textual_inversion(file)` gives a user) and starts from the embedding of `attack.inversion_init`;
only its vector(s) are trained. Then each forget prompt, with the concept's words replaced by the token, is
sampled and judged. The embedding is returned in diffusers' textual-inversion format ({token: (n, D)}).
"""

from __future__ import annotations

import re
import time

import torch

from erasecli.attacks import Attack, AttackContext, AttackOutcome
from erasecli.attacks.prompt import frozen


def token_name(concept) -> str:
    return "<" + re.sub(r"[^a-z0-9]+", "-", concept.name.lower()).strip("-") + "-inverted>"


def inverted_prompt(prompt: str, concept, token: str) -> str:
    """The prompt with the concept's words replaced by the learned token: 'a red handwritten digit three' ->
    'a red handwritten digit <digit-3-inverted>'; on the tiny world the word and the numeral of a digit, or a
    colour's name; elsewhere the concept's name."""
    if concept.tiny_world:
        from erasecli.models import tiny_world as W

        words = ([W.DIGIT_WORDS[concept.target], str(concept.target)] if concept.kind == "digit"
                 else [W.COLOUR_NAMES[concept.target]])
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
        tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
        token = token_name(ctx.concept)
        init_ids = tok(a.inversion_init, add_special_tokens=False).input_ids or [tok.bos_token_id]
        init = te.get_input_embeddings().weight[init_ids].detach().float().mean(0)  # (D,)
        pipe.load_textual_inversion({token: init.repeat(a.num_vectors, 1)}, token=token)
        try:
            emb = te.get_input_embeddings()  # resized by the load: a new module
            ids_new = tok.convert_tokens_to_ids([token] + [f"{token}_{i}" for i in range(1, a.num_vectors)])
            ids_new = torch.tensor(ids_new, device=ctx.device)
            prompts = [pipe.maybe_convert_prompt(inverted_prompt(p, ctx.concept, token), tok) for p in ctx.forget]
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(ctx.device)  # (N, L)
            z0 = ctx.targets.to(ctx.device)  # (N, n_t, C, h, w)
            n, n_t = z0.shape[:2]
            v = init.repeat(a.num_vectors, 1).clone().to(ctx.device).requires_grad_(True)  # (n_vec, D)
            opt = torch.optim.Adam([v], lr=a.inversion_lr)
            gen = torch.Generator("cpu").manual_seed(a.seed + 1)
            steps = ctx.steps(a.inversion_steps)

            def hook(module, args, out):  # the new tokens' rows come from v, so only v takes the gradient
                mask = (args[0][..., None] == ids_new).any(-1)  # (B, L)
                if not mask.any():
                    return out
                which = (args[0][..., None] == ids_new).float().argmax(-1)  # (B, L) index into v
                return torch.where(mask[..., None], v[which].to(out.dtype), out)

            handle = emb.register_forward_hook(hook)
            losses = []
            try:
                with frozen(unet, te):
                    for _ in range(steps):
                        rows = torch.randint(n * n_t, (a.inversion_batch,), generator=gen)
                        j, i = rows // n_t, rows % n_t
                        x0 = z0[j.to(ctx.device), i.to(ctx.device)]  # (B, C, h, w)
                        c = te(ids[j.to(ctx.device)])[0]  # (B, L, D)
                        loss = ctx.denoising_loss(x0, c, gen)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        losses.append(loss.item())
            finally:
                handle.remove()
            with torch.no_grad():
                emb.weight[ids_new] = v.detach().to(emb.weight.dtype)
            texts = [inverted_prompt(p, ctx.concept, token) for p in ctx.forget]
            drawn = ctx.draw(texts)  # through the pipeline, which expands a multi-vector token itself
            success = [bool(p) or ctx.succeeds(imgs) for p, imgs in zip(ctx.pre, drawn)]
        finally:
            pipe.unload_textual_inversion()
        return AttackOutcome(self.name, list(ctx.forget), list(ctx.pre), success, texts, drawn,
                             seconds=time.time() - t0, embedding={token: v.detach().float().cpu()},
                             extra={"token": token, "num_vectors": a.num_vectors, "steps": steps,
                                    "lr": a.inversion_lr, "init": a.inversion_init,
                                    "loss_first": round(sum(losses[:10]) / max(1, len(losses[:10])), 5),
                                    "loss_last": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 5)})
