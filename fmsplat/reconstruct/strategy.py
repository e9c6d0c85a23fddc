"""What a densification strategy is to the 3DGS trainer: the one interface through which the trainer
lets a strategy change the Gaussians (their count, positions, opacities) around each step.

Per training iteration `it` (1-based, as the original code counts), the trainer does

    loss = photometric + strategy.step_pre_backward(params, it)
    optimise(optimizer, loss)
    strategy.step_post_backward(params, optimizer, it=it, render=res, camera=cam, means_lr=lr, generator=g)

and saves `strategy.state_dict()` in its checkpoints (restored with `load_state_dict`), so a resumed run
continues exactly. Implementations: densify.AdaptiveDensity (3DGS: clone, split, prune, opacity resets)
and mcmc.MCMCStrategy (relocation, growth, position noise).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Strategy(Protocol):
    def step_pre_backward(self, params: dict, it: int) -> torch.Tensor | float:
        """A term added to iteration `it`'s loss before back-propagation (0.0 for none)."""

    def step_post_backward(self, params: dict, optimizer: torch.optim.Optimizer, *, it: int, render, camera,
                           means_lr: float, generator: torch.Generator) -> dict:
        """After the optimizer's step of iteration `it`: read the gradients of `render` (the step's
        RGB render) and change the Gaussians in `params` in place, keeping `optimizer` aligned with
        their rows; random draws come from `generator`. Returns counts of what it did."""

    def state_dict(self) -> dict:
        """What a checkpoint must keep for the strategy to continue (tensors, numbers)."""

    def load_state_dict(self, state: dict) -> None:
        ...


__all__ = ["Strategy"]
