"""Unlearning methods, one file each, behind one small interface.

A method is a class with `step(k) -> dict` (one optimiser step; the dict is that step's log row: losses,
gradient norms, lambda) and `state_dict()` / `load_state_dict()` for whatever it owns beyond the shared
adapter (its optimisers, inference or policy networks). The shared loop (`erasecli.methods.loop`) builds the
`Context`, calls `step`, logs, checkpoints and saves the delta; a method never touches files or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar

from erasecli.dist import World
from erasecli.errors import RecipeError

if TYPE_CHECKING:  # types only: torch and the models load lazily, inside the commands that need them
    import torch

    from erasecli.data import TrainData
    from erasecli.diffusion.noise import Schedule
    from erasecli.methods.adapter import Adapter
    from erasecli.models.registry import Base
    from erasecli.recipes import Recipe


@dataclass
class Context:
    """What every method's step needs. All randomness comes from `gen` (CPU), whose state checkpoints save."""

    recipe: Recipe
    base: Base
    unet: torch.nn.Module  # the base's denoiser with the trainable adapter attached (or its torch.compile)
    adapter: Adapter  # the LoRA being trained (erasecli.methods.adapter)
    data: TrainData
    gen: torch.Generator  # on the CPU
    noise: Schedule  # forward noising and targets (erasecli.diffusion.noise)
    device: torch.device
    encode: Callable | None = None  # prompt indices -> text embeddings, when train.cache_text_embeds is false
    world: World = field(default_factory=World)  # this process's share of each batch (erasecli.dist)
    cond: object = None  # methods.robust.Conditions: token ids + soft tokens, with robust.enabled or lora.text_encoder
    adversary: object = None  # methods.robust.Adversary: the inner attack, with robust.enabled

    @property
    def params(self) -> list:
        """The trainable parameters (the adapter's), fp32."""
        return self.adapter.params

    @property
    def num_timesteps(self) -> int:
        return self.noise.num_timesteps

    def randint(self, high: int, n: int):
        import torch

        return torch.randint(high, (n,), generator=self.gen).to(self.device)

    def randn(self, shape):
        import torch

        return torch.randn(shape, generator=self.gen).to(self.device)

    def rand(self, n: int):
        import torch

        return torch.rand(n, generator=self.gen).to(self.device)

    def eps(self, x_t, t, c):
        """eps_theta(x_t, t, c): the UNet's noise prediction, c an index tensor into data.embeds."""
        from erasecli.diffusion.cond import unet_eps

        emb = self.data.embeds[c] if self.encode is None else self.encode(c)
        return self.noise.eps_from(unet_eps(self.unet, x_t, t, emb), x_t, t)

    def err(self, e, target, t):
        """Per-example squared error (B,) of an epsilon-space prediction at timesteps t: the mean squared error on
        DDPM bases; on a flow base the velocity's (Schedule.loss_weight; docs/methods.md, "Flux")."""
        from erasecli.methods.losses import mse

        out = mse(e, target)
        w = self.noise.loss_weight(t)
        return out if w is None else out * w

    def retain_batch(self, n: int):
        """n retain examples (x_r, c_r); a share `data.uncond_fraction` gets the empty prompt (index 0)."""
        import torch

        d = self.data
        j = self.randint(len(d.retain), n)
        c = d.retain_c[j]
        drop = self.rand(n) < self.recipe.data.uncond_fraction
        return d.retain[j], torch.where(drop, torch.zeros_like(c), c)

    def noisy_retain(self, n: int):
        """n retain examples noised to random t: (x_r_t, t_r, c_r, eps_r), for a retain-preservation term."""
        x_r, c_r = self.retain_batch(n)
        t_r = self.randint(self.num_timesteps, n)
        eps_r = self.randn(x_r.shape)
        return self.noise.add_noise(x_r, eps_r, t_r), t_r, c_r, eps_r


class Method:
    """What every method class says about itself: its name and capabilities, as class flags that the checks,
    the CLI and the loop read (never a test of the method's name)."""

    name: ClassVar[str] = ""
    closed_form: ClassVar[bool] = False  # True: no loop; the class's `edit` solves the delta (methods.uce)
    guard: ClassVar[bool] = False  # True: no weights change; `build` makes a sampling-time guard (methods.sld)
    data_parallel: ClassVar[bool] = True  # splits its batch over several processes (erasecli.dist)
    supports_together: ClassVar[bool] = True  # erases several concepts (concept.also) into one delta
    supports_robust: ClassVar[bool] = True  # trains against an inner attack (robust.enabled, methods.robust)
    supports_text_encoder: ClassVar[bool] = True  # trains text-encoder LoRAs too (lora.text_encoder)
    uses_critic: ClassVar[bool] = False  # takes a trained critic (--critic, critic.path)
    why_not_robust: ClassVar[str] = ""  # the reason, when supports_robust / supports_text_encoder is False
    adapter_targets: ClassVar[tuple] = ()  # non-empty: where the method's adapter must sit (receler's eraser)
    kinds: ClassVar[tuple] = ("sd", "sdxl")  # the base kinds (erasecli.diffusion.kinds) the method is restated for

    @classmethod
    def resolve(cls, recipe):
        """The recipe with what the method fixes written in, so the recipe beside the delta says what ran: an
        `adapter_targets` method's LoRA goes there when lora.target_modules is left at its default; another
        choice is refused."""
        if not cls.adapter_targets or tuple(recipe.lora.target_modules) == tuple(cls.adapter_targets):
            return recipe
        from dataclasses import replace

        from erasecli.recipes.schema import LoraConfig

        if tuple(recipe.lora.target_modules) != LoraConfig().target_modules:
            raise RecipeError(f"{cls.name}'s adapter sits on {', '.join(cls.adapter_targets)}; lora.target_modules "
                              f"{list(recipe.lora.target_modules)} asks for another place",
                              hint=f"drop the lora.target_modules setting or set it to [{', '.join(cls.adapter_targets)}]")
        return replace(recipe, lora=replace(recipe.lora, target_modules=tuple(cls.adapter_targets)))

    @classmethod
    def uses_images(cls, recipe) -> bool:
        """Whether the run needs the sampled forget / anchor / retain latents (data.*); False: the method samples
        its own (critic-rl) or needs none (closed form), and no data sets are built."""
        return True

    @classmethod
    def check(cls, recipe) -> None:
        """Method-specific recipe checks that span fields (single-field ranges are the recipe's CHECKS)."""


class Unlearner(Method):
    """The interface of a training method. Subclasses set `name` and implement `step`; the defaults suit methods
    that own only an optimiser over `ctx.params`."""

    def __init__(self, ctx: Context):
        import torch

        self.ctx = ctx
        self.opt = torch.optim.AdamW(ctx.params, lr=ctx.recipe.train.lr, weight_decay=0.0)

    @classmethod
    def total_steps(cls, recipe) -> int:
        return recipe.train.steps

    def step(self, k: int) -> dict:
        raise NotImplementedError

    def eps_and_retain(self, x_t, t, c, weight: float):
        """(eps_theta(x_t, t, c), L_r): with weight > 0 and retain images, a batch of noisy retain images rides
        in the same forward and L_r is its diffusion loss (this process's share of the batch mean), else 0."""
        import torch

        ctx, B = self.ctx, self.ctx.recipe.train.batch_size
        if weight > 0 and len(ctx.data.retain) > 0:
            m_r, t_r, c_r, eps_r = (ctx.world.local(v) for v in ctx.noisy_retain(B))
            e, e_r = ctx.eps(torch.cat([x_t, m_r]), torch.cat([t, t_r]), torch.cat([c, c_r])).chunk(2)
            return e, ctx.err(e_r, eps_r, t_r).sum() / B
        e = ctx.eps(x_t, t, c)
        return e, torch.zeros((), device=e.device)

    def update(self, loss, terms: dict) -> dict:
        """Backward, gradients summed over processes, one optimiser step. Returns the log row: the loss and each
        named term (totals over processes) and the gradient norm."""
        from erasecli.methods.losses import grad_norm

        ctx = self.ctx
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.world.sum_([p.grad for p in ctx.params if p.grad is not None])
        totals = ctx.world.total(loss, *terms.values())
        norm = grad_norm([p.grad for p in ctx.params if p.grad is not None])
        self.opt.step()
        return {"loss": totals[0].item(), **{k: v.item() for k, v in zip(terms, totals[1:])}, "grad_norm": norm.item()}

    def run_position(self, k: int) -> tuple[int, int]:
        """(step within its run, that run's length) for train.lr_schedule; ppo-alpha's episodes are runs."""
        return k, self.total_steps(self.ctx.recipe)

    def finished(self, rows: list[dict]) -> bool:
        """After each step, with every row so far: True stops the run before train.steps (default: never)."""
        return False

    def extra_summary(self) -> dict:
        """Anything the run summary should carry besides the loop's figures (e.g. a critic's report)."""
        return {}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])


# The registry: an explicit dict, imported after Unlearner exists (each method module imports it from here).
from erasecli.methods.ac import Ac  # noqa: E402
from erasecli.methods.adaptive_siss import AdaptiveSiss  # noqa: E402
from erasecli.methods.ant import Ant  # noqa: E402
from erasecli.methods.critic_rl import CriticRl  # noqa: E402
from erasecli.methods.esd import Esd  # noqa: E402
from erasecli.methods.mace import Mace  # noqa: E402
from erasecli.methods.ppo_alpha import PpoAlpha  # noqa: E402
from erasecli.methods.receler import Receler  # noqa: E402
from erasecli.methods.siss import Siss  # noqa: E402
from erasecli.methods.sa import Sa  # noqa: E402
from erasecli.methods.safree import Safree  # noqa: E402
from erasecli.methods.sld import Sld  # noqa: E402
from erasecli.methods.uce import Rece, Uce  # noqa: E402

from erasecli.recipes.schema import METHOD_NAMES  # noqa: E402

_CLASSES = {m.name: m for m in (Siss, AdaptiveSiss, PpoAlpha, Esd, CriticRl, Uce, Rece, Ac, Sa, Receler, Mace, Ant, Sld, Safree)}
METHODS: dict[str, type] = {name: _CLASSES[name] for name in METHOD_NAMES}


def get_method(name: str) -> type[Method]:
    """The method class of a name; the request checks (api.check_unlearn) call it once per run and pass the
    class down."""
    if name not in METHODS:
        raise RecipeError(f"unknown method {name!r}" if name else "no method given",
                          hint="valid methods: " + ", ".join(METHODS))
    return METHODS[name]
