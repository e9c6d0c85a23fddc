"""Adaptive density control of 3DGS (Kerbl et al. 2023): clone, split, prune, opacity reset.

Operates on a dict of leaf parameters (one Adam param group each) and keeps the optimizer's
moments aligned with the rows: pruned rows lose their state, new rows start at zero, as the
original implementation does.
"""

from __future__ import annotations

import math

import torch

from fmsplat.render.projection import quat_to_rotmat


def _replace_param(optimizer: torch.optim.Optimizer, old: torch.nn.Parameter, new_data: torch.Tensor,
                   state_fn) -> torch.nn.Parameter:
    new = torch.nn.Parameter(new_data.contiguous())
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
                state = optimizer.state.pop(old, None)
                if state:
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in state:
                            state[key] = state_fn(state[key])
                    optimizer.state[new] = state
    return new


def keep_rows(params: dict, optimizer: torch.optim.Optimizer, keep: torch.Tensor) -> None:
    for name, p in list(params.items()):
        params[name] = _replace_param(optimizer, p, p.data[keep], lambda s: s[keep])


def append_rows(params: dict, optimizer: torch.optim.Optimizer, new_rows: dict) -> None:
    for name, p in list(params.items()):
        extra = new_rows[name]
        params[name] = _replace_param(
            optimizer, p, torch.cat([p.data, extra]), lambda s, e=extra: torch.cat([s, torch.zeros_like(e)])
        )


def reset_opacity(params: dict, optimizer: torch.optim.Optimizer, max_opacity: float = 0.01) -> None:
    """Clamp every opacity to at most `max_opacity` (3DGS's periodic reset)."""
    cap = math.log(max_opacity / (1 - max_opacity))
    p = params["opacities"]
    params["opacities"] = _replace_param(
        optimizer, p, torch.clamp(p.data, max=cap), lambda s: torch.zeros_like(s)
    )


class DensityControl:
    """Accumulates screen-space gradient statistics and applies the 3DGS refinement rules.

    grad_threshold is in NDC units per view (3DGS's 0.0002), so pixel gradients are scaled by
    half the image size before they are averaged.
    """

    def __init__(self, n: int, extent: float, grad_threshold: float = 2e-4, percent_dense: float = 0.01,
                 min_opacity: float = 0.005, max_screen_size: float = 20.0, max_world_size: float = 0.1,
                 max_gaussians: int | None = None):
        self.extent = extent
        self.grad_threshold = grad_threshold
        self.percent_dense = percent_dense
        self.min_opacity = min_opacity
        self.max_screen_size = max_screen_size
        self.max_world_size = max_world_size
        self.max_gaussians = max_gaussians
        self.reset_stats(n)

    def reset_stats(self, n: int) -> None:
        self.grad_accum = torch.zeros(n)
        self.count = torch.zeros(n)
        self.max_radii = torch.zeros(n)

    def observe(self, means2d_grad: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        visible = radii > 0
        g = means2d_grad.detach() * torch.tensor([0.5 * width, 0.5 * height])
        self.grad_accum[visible] += g[visible].norm(dim=-1)
        self.count[visible] += 1
        self.max_radii[visible] = torch.maximum(self.max_radii[visible], radii[visible].float())

    def refine(self, params: dict, optimizer: torch.optim.Optimizer, prune_large: bool, generator=None) -> dict:
        """Clone small and split large high-gradient Gaussians, then prune. Returns counts."""
        n = params["means"].shape[0]
        avg_grad = self.grad_accum / self.count.clamp_min(1)
        candidates = avg_grad >= self.grad_threshold
        max_scale = torch.exp(params["scales"].data).max(dim=-1).values
        small = max_scale <= self.percent_dense * self.extent
        clone = candidates & small
        split = candidates & ~small
        if self.max_gaussians is not None:
            # Respect the budget: keep the strongest candidates (a split adds one net Gaussian).
            room = max(0, self.max_gaussians - n)
            if int(clone.sum() + split.sum()) > room:
                score = torch.where(clone | split, avg_grad, torch.full_like(avg_grad, -1.0))
                chosen = torch.zeros_like(clone)
                chosen[torch.argsort(score, descending=True)[:room]] = True
                clone &= chosen
                split &= chosen

        new_rows = {k: p.data[clone] for k, p in params.items()}
        # Split: two samples from each large Gaussian, scales shrunk by 1.6; the original goes.
        n_split = int(split.sum())
        if n_split:
            scales = torch.exp(params["scales"].data[split]).repeat(2, 1)
            rot = quat_to_rotmat(params["quats"].data[split]).repeat(2, 1, 1)
            offsets = torch.randn(scales.shape, generator=generator) * scales
            split_rows = {k: p.data[split].repeat(2, *([1] * (p.dim() - 1))) for k, p in params.items()}
            split_rows["means"] = split_rows["means"] + (rot @ offsets[..., None])[..., 0]
            split_rows["scales"] = torch.log(scales / 1.6)
            new_rows = {k: torch.cat([new_rows[k], split_rows[k]]) for k in params}
        append_rows(params, optimizer, new_rows)

        n_after = params["means"].shape[0]
        prune = torch.zeros(n_after, dtype=torch.bool)
        prune[:n][split] = True
        opac = torch.sigmoid(params["opacities"].data)
        prune |= opac < self.min_opacity
        if prune_large:
            radii = torch.cat([self.max_radii, torch.zeros(n_after - n)])
            world = torch.exp(params["scales"].data).max(dim=-1).values
            prune |= (radii > self.max_screen_size) | (world > self.max_world_size * self.extent)
        if prune.all():
            prune[torch.argmax(opac)] = False  # never leave an empty model
        keep_rows(params, optimizer, ~prune)
        self.reset_stats(params["means"].shape[0])
        return {"cloned": int(clone.sum()), "split": n_split, "pruned": int(prune.sum()), "total": params["means"].shape[0]}


def is_refine_step(sched: dict, it: int) -> bool:
    """Clone/split/prune after iteration `it` (1-based): densify_from < it < densify_until, every
    densify_every iterations, as the original code."""
    return sched["densify_from"] < it < sched["densify_until"] and it % sched["densify_every"] == 0


def is_reset_step(sched: dict, it: int) -> bool:
    """Opacity reset after iteration `it`: every reset_every iterations, and only while a full
    interval of refinement still follows (the original's resets at 3000..12000 of 15000 all do;
    a reset just before densification ends would leave the scene transparent and unpruned)."""
    return it % sched["reset_every"] == 0 and it + sched["reset_every"] <= sched["densify_until"]


class AdaptiveDensity:
    """3DGS's adaptive density control as a training strategy (reconstruct.strategy): screen-space
    gradient statistics while densifying, clone/split/prune at refinement iterations, opacity resets,
    on the schedule `sched` (TrainConfig.schedule()). Large Gaussians are pruned only after the first
    reset, as the original code."""

    def __init__(self, control: DensityControl, sched: dict):
        self.control, self.sched = control, sched

    def step_pre_backward(self, params: dict, it: int) -> float:
        return 0.0  # no regulariser

    def step_post_backward(self, params: dict, optimizer: torch.optim.Optimizer, *, it: int, render, camera,
                           means_lr: float, generator: torch.Generator) -> dict:
        counts = {}
        if it < self.sched["densify_until"]:
            self.control.observe(render.means2d.grad, render.radii, camera.width, camera.height)
        if is_refine_step(self.sched, it):
            counts = self.control.refine(params, optimizer, prune_large=it > self.sched["reset_every"],
                                         generator=generator)
        if is_reset_step(self.sched, it):
            reset_opacity(params, optimizer)
        return counts

    def state_dict(self) -> dict:
        c = self.control
        return {"grad_accum": c.grad_accum, "count": c.count, "max_radii": c.max_radii}

    def load_state_dict(self, state: dict) -> None:
        self.control.grad_accum, self.control.count, self.control.max_radii = (
            state["grad_accum"], state["count"], state["max_radii"])
