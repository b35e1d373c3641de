"""Small tensor helpers the methods' losses share (siss, esd, critic-rl)."""

from __future__ import annotations

import torch


def sq_dist(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||u - v||^2 summed over all but the batch dim.  (B,)"""
    return (u - v).pow(2).flatten(1).sum(1)


def mse(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||u - v||^2 as a mean over all but the batch dim.  (B,)"""
    return (u - v).pow(2).flatten(1).mean(1)


def grad_norm(grads) -> torch.Tensor:
    """The L2 norm of a list of gradient tensors taken together."""
    return torch.sqrt(sum(g.pow(2).sum() for g in grads))
