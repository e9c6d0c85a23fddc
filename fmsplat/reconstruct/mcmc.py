"""MCMC densification (Kheradmand et al. 2024, "3D Gaussian Splatting as Markov Chain Monte
Carlo", arXiv 2404.09591), as gsplat's `MCMCStrategy` runs it.

The Gaussians are treated as samples of a distribution: instead of cloning, splitting, pruning
and resetting opacities (3DGS), dead Gaussians are *relocated* onto live ones, the count grows
by a fixed rate up to a budget, and every step adds opacity-gated noise to the positions
(stochastic-gradient Langevin dynamics). A relocation keeps the rendered image (nearly) the
same: a Gaussian that is sampled N times is replaced by N copies whose opacity and scale follow
the paper's Eq. 9, so that the N copies composite to the original.

Operates on the trainer's parameter dict (means (N,3), quats (N,4) wxyz, scales (N,3) log,
opacities (N,) logit, sh0 (N,1,3), shN (N,K,3); one Adam param group each, named after its key)
and keeps the optimizer aligned through densify.py's row helpers.
"""

from __future__ import annotations

import functools
import math

import torch

from fmsplat.reconstruct.configs import MCMCConfig, grown_count
from fmsplat.reconstruct.densify import _replace_param, append_rows
from fmsplat.render.projection import quat_to_rotmat

# A Gaussian sampled more often than this is treated as sampled N_MAX times (gsplat's bound on
# its binomial table). It bounds the (M, N_MAX) work of Eq. 9; sampling is proportional to
# opacity, so only a very opaque Gaussian among very few live ones gets near it.
N_MAX = 51
# op_sigmoid of the noise: a steep step that lets only nearly transparent Gaussians move
# (factor 1/2 at opacity 0.005, < 1e-4 at opacity 0.1), gsplat's constants.
NOISE_K = 100.0
NOISE_X0 = 0.995


@functools.lru_cache(maxsize=4)
def _binomials(n_max: int) -> torch.Tensor:
    """(n_max+1, n_max+1) float64 table of C(n, j), zero for j > n."""
    return torch.tensor([[math.comb(n, j) for j in range(n_max + 1)] for n in range(n_max + 1)],
                        dtype=torch.float64)


def relocation_opacity_scale(opacities: torch.Tensor, scales: torch.Tensor, counts: torch.Tensor,
                             n_max: int = N_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 of Kheradmand et al. 2024: the opacity and scale of each of N copies of a Gaussian
    (activated opacity o, activated scales s) such that the N copies composite to the original:

        o_new = 1 - (1 - o)^(1/N)
        s_new = o / (Σ_{i=1..N} Σ_{k=0..i-1} C(i-1, k) (-1)^k o_new^(k+1) / sqrt(k+1)) · s

    Compositing N copies at the centre gives 1 - (1 - o_new)^N = o exactly, and the scale makes
    the composite's 1D profile integrate to the original's. The double sum is evaluated through
    Σ_{i=k+1..N} C(i-1, k) = C(N, k+1) as Σ_{j=1..N} (-1)^(j-1) C(N, j) o_new^j / sqrt(j), in
    float64: an alternating sum whose largest term is below (1 + o_new)^N <= 1 / (1 - o).

    opacities (M,) in (0, 1), scales (M, 3) positive, counts (M,) integer N >= 1 (clamped to
    n_max). Returns (new opacities (M,), new scales (M, 3)) in the input dtypes."""
    n = counts.to(torch.long).clamp(1, n_max)
    o = opacities.double()
    new_o = -torch.expm1(torch.log1p(-o) / n.double())  # 1 - (1-o)^(1/N), accurate for small o
    j = torch.arange(1, n_max + 1, dtype=torch.float64, device=o.device)
    sign = 1.0 - 2.0 * ((j - 1) % 2)
    binom = _binomials(n_max).to(o.device)[n][:, 1:]  # C(N, j), zero for j > N
    denom = (sign * binom * new_o[:, None] ** j / j.sqrt()).sum(dim=1)
    coeff = torch.where(denom > 0, o / denom.clamp_min(1e-300), torch.ones_like(o))
    return new_o.to(opacities.dtype), (scales.double() * coeff[:, None]).to(scales.dtype)


def _sample(weights: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n indices drawn with replacement, with probability proportional to `weights` (drawn on
    the generator's device, returned on the weights' device)."""
    dev = generator.device if generator is not None else weights.device
    return torch.multinomial(weights.float().to(dev), n, replacement=True, generator=generator).to(weights.device)


def _copy_with_eq9(params: dict, src: torch.Tensor, min_opacity: float) -> dict:
    """The parameter data (clones) with the sources `src` (may repeat) given the opacity and
    scale of Eq. 9 for count = (times sampled) + 1, the original counting as one of the copies."""
    data = {k: p.data.clone() for k, p in params.items()}
    o = torch.sigmoid(data["opacities"])
    counts = torch.bincount(src, minlength=o.shape[0])[src] + 1
    new_o, new_s = relocation_opacity_scale(o[src], torch.exp(data["scales"][src]), counts)
    # Kept strictly inside (0, 1) for the logit, and not below the death threshold.
    eps = torch.finfo(new_o.dtype).eps
    data["opacities"][src] = torch.logit(new_o.clamp(min_opacity, 1.0 - eps))
    data["scales"][src] = torch.log(new_s)
    return data


def _set_rows(params: dict, optimizer: torch.optim.Optimizer, data: dict, rows: torch.Tensor) -> None:
    """Replace every parameter by `data[key]` (same shape) and zero the Adam moments of `rows`:
    their old moments belong to a Gaussian that is no longer there."""
    for name, p in list(params.items()):
        params[name] = _replace_param(optimizer, p, data[name], lambda s: s.index_fill(0, rows, 0))


@torch.no_grad()
def relocate(params: dict, optimizer: torch.optim.Optimizer, min_opacity: float = 0.005,
             generator: torch.Generator | None = None) -> int:
    """Move every dead Gaussian (opacity <= min_opacity) onto a live one drawn with probability
    proportional to opacity; each drawn source and its copies share the source's opacity and
    scale through Eq. 9, so the image barely changes. The count stays the same. The moved rows'
    and the sources' Adam moments are zeroed. Returns the number of Gaussians moved."""
    o = torch.sigmoid(params["opacities"].data)
    dead = o <= min_opacity
    n_dead = int(dead.sum())
    if n_dead == 0 or n_dead == o.shape[0]:
        return 0  # nothing to move, or nothing alive to move it to
    alive = torch.nonzero(~dead).squeeze(1)
    dead_idx = torch.nonzero(dead).squeeze(1)
    src = alive[_sample(o[alive], n_dead, generator)]
    data = _copy_with_eq9(params, src, min_opacity)
    for k in data:
        data[k][dead_idx] = data[k][src]
    _set_rows(params, optimizer, data, torch.cat([src, dead_idx]))
    return n_dead


@torch.no_grad()
def add_new(params: dict, optimizer: torch.optim.Optimizer, cap_max: int, grow_rate: float = 0.05,
            min_opacity: float = 0.005, generator: torch.Generator | None = None) -> int:
    """Grow the count by `grow_rate` (never past `cap_max`): new Gaussians are copies of
    sources drawn with probability proportional to opacity, with Eq. 9's opacity and scale on
    the source and its copies, appended with zero Adam moments (the sources' are zeroed too).
    Returns the number added."""
    n = params["means"].shape[0]
    n_add = grown_count(n, cap_max, grow_rate) - n
    o = torch.sigmoid(params["opacities"].data)
    if n_add == 0 or not bool((o > 0).any()):
        return 0
    src = _sample(o, n_add, generator)
    data = _copy_with_eq9(params, src, min_opacity)
    _set_rows(params, optimizer, data, src)
    append_rows(params, optimizer, {k: v[src] for k, v in data.items()})
    return n_add


@torch.no_grad()
def inject_noise(params: dict, scaler: float, generator: torch.Generator | None = None) -> None:
    """The paper's position noise (its SGLD term): means += Σ · ε · op_sigmoid(1 - o) · scaler
    with ε ~ N(0, I), Σ = R diag(s²) Rᵀ the Gaussian's covariance, op_sigmoid(x) =
    sigmoid(k (x - x0)) with gsplat's k = 100, x0 = 0.995, and scaler = noise_lr × the current
    means learning rate. Opaque Gaussians stay put; nearly transparent ones explore."""
    means = params["means"]
    o = torch.sigmoid(params["opacities"].data)
    s2 = torch.exp(2.0 * params["scales"].data)
    rot = quat_to_rotmat(params["quats"].data)
    dev = generator.device if generator is not None else means.device
    eps = torch.randn(means.shape, generator=generator, device=dev, dtype=means.dtype).to(means.device)
    eps = eps * (torch.sigmoid(NOISE_K * ((1.0 - o) - NOISE_X0)) * scaler)[:, None]
    # Σ ε without forming Σ: rotate into the Gaussian's frame, scale by s², rotate back.
    local = torch.einsum("nji,nj->ni", rot, eps) * s2
    means.data.add_(torch.einsum("nij,nj->ni", rot, local))


def regularisation(params: dict, cfg: MCMCConfig) -> torch.Tensor:
    """The paper's L1 regularisers: opacity_reg · mean(sigmoid(opacities)) + scale_reg ·
    mean(exp(scales)); they let Gaussians that do not help the image fade out (and be
    relocated) instead of lingering."""
    return (cfg.opacity_reg * torch.sigmoid(params["opacities"]).mean()
            + cfg.scale_reg * torch.exp(params["scales"]).mean())


class MCMCStrategy:
    """MCMC densification as a training strategy (reconstruct.strategy). Per iteration `it` (1-based):

        loss = photometric + strategy.step_pre_backward(params, it)   # the regulariser
        loss.backward(); optimizer.step()
        strategy.step_post_backward(params, optimizer, it=it, ..., means_lr=lr, generator=g)

    `step` (the post-backward step) relocates and grows at refinement iterations, then injects
    noise. The strategy keeps no state that changes during training (its randomness comes from the
    caller's generator), so its state_dict is empty."""

    def __init__(self, cfg: MCMCConfig | None = None):
        self.cfg = cfg or MCMCConfig()

    def is_refine_step(self, it: int) -> bool:
        c = self.cfg
        return c.refine_start_iter < it < c.refine_stop_iter and it % c.refine_every == 0

    def step_pre_backward(self, params: dict, it: int) -> torch.Tensor:
        return regularisation(params, self.cfg)

    def step_post_backward(self, params: dict, optimizer: torch.optim.Optimizer, *, it: int, render, camera,
                           means_lr: float, generator: torch.Generator) -> dict:
        return self.step(params, optimizer, it, means_lr, generator)

    def state_dict(self) -> dict:
        return {}  # no state changes during training: the randomness is the caller's generator

    def load_state_dict(self, state: dict) -> None:
        pass

    def step(self, params: dict, optimizer: torch.optim.Optimizer, it: int, means_lr: float,
             generator: torch.Generator | None = None) -> dict:
        """After optimizer.step() of iteration `it`: relocate dead Gaussians and grow (at
        refinement iterations), then perturb the positions. Returns the counts."""
        counts = {"relocated": 0, "added": 0}
        if self.is_refine_step(it):
            counts["relocated"] = relocate(params, optimizer, self.cfg.min_opacity, generator)
            counts["added"] = add_new(params, optimizer, self.cfg.cap_max, self.cfg.grow_rate,
                                      self.cfg.min_opacity, generator)
        inject_noise(params, means_lr * self.cfg.noise_lr, generator)
        return counts


__all__ = ["MCMCConfig", "MCMCStrategy", "relocation_opacity_scale", "relocate", "add_new", "inject_noise",
           "regularisation"]
