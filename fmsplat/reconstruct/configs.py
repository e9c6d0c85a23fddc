"""The settings of 3DGS training (`TrainConfig`) and of MCMC densification (`MCMCConfig`): plain typed
settings (fmsplat.config) with no heavy import, so that the command line builds `fmsplat train`'s options
from them without loading torch or numba."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from fmsplat.config import Settings, setting

REFERENCE_STEPS = 30_000  # the schedule of the original code is given for this many steps
STRATEGIES = ("3dgs", "mcmc")
FILL_SHARE = 0.5  # MCMC growth fills the budget within this share of the refinement rounds (fitted_growth)
MAX_GROW_RATE = 1.0  # ... and never more than doubles the count in one round
def grown_count(n: int, cap_max: int, grow_rate: float) -> int:
    """The Gaussian count after one MCMC growth round from `n` (never past cap_max; never shrinking)."""
    return max(n, min(cap_max, int((1.0 + grow_rate) * n)))


INITS = ("auto", "points", "sfm", "frustum", "box")  # the starts reconstruct/init.py implements


@dataclass
class MCMCConfig(Settings):
    """Settings of MCMC densification (Kheradmand et al. 2024, "3D Gaussian Splatting as Markov
    Chain Monte Carlo", arXiv 2404.09591). The defaults are gsplat's `MCMCStrategy` (its growth
    is a fixed 5%) and the regulariser weights of gsplat's MCMC training preset, except `cap_max`.
    The trainer passes TrainConfig.max_gaussians as cap_max and prune_opacity as min_opacity, and
    fits the refinement iterations to its run length (`scaled`)."""

    label: ClassVar[str] = "mcmc config"
    cap_max: int = setting(200_000, "the Gaussian budget (gsplat: 1,000,000, a GPU budget). MCMC always grows to "
                                    "its cap, so the cap sets the cost of every later step (bench/README.md, "
                                    "'Reconstruction')", ge=1)
    noise_lr: float = setting(5e5, "position noise scale, multiplied by the current means learning rate", ge=0)
    refine_start_iter: int = setting(500, "relocate and grow after iterations start < it < stop with it % every "
                                          "== 0 (gsplat's numbers for 30,000 steps)", ge=0)
    refine_stop_iter: int = setting(25_000, "... the stop", ge=0)
    refine_every: int = setting(100, "... the interval", ge=1)
    min_opacity: float = setting(0.005, "Gaussians at or below this opacity are dead (relocated)", gt=0, lt=1)
    grow_rate: float = setting(0.05, "each refinement adds at least this fraction of the current count (more from a "
                                     "sparse start: the trainer fits it so the budget fills by mid-run)", ge=0)
    opacity_reg: float = setting(0.01, "weight of the L1 regulariser on the activated opacities (`regularisation`), "
                                       "which pushes unused Gaussians to die", ge=0)
    scale_reg: float = setting(0.01, "weight of the L1 regulariser on the activated scales", ge=0)

    def refinement_iterations(self) -> list[int]:
        """The iterations at which this config relocates and grows."""
        return [it for it in range(self.refine_start_iter + 1, self.refine_stop_iter) if it % self.refine_every == 0]

    def fitted_growth(self, n_start: int, fill_share: float = FILL_SHARE, max_rate: float = MAX_GROW_RATE) -> "MCMCConfig":
        """This config with a growth rate that fills the budget from `n_start` Gaussians within the first
        `fill_share` of the refinement rounds (never below grow_rate, never above `max_rate`). gsplat's
        fixed 5 % assumes a start near the budget's scale: from 649 SfM points (11 phone photos) it
        reached 1.3k Gaussians by step 170 and 35k by step 846 of 1,000, most of the run spent on a
        sparse scene; from the fox's 14k points it fills 100k in about half the run, as before."""
        rounds = len(self.refinement_iterations())
        if n_start <= 0 or n_start >= self.cap_max or rounds == 0:
            return self
        need = (self.cap_max / n_start) ** (1.0 / max(1, int(fill_share * rounds))) - 1.0
        rate = min(max_rate, max(self.grow_rate, need))
        return dataclasses.replace(self, grow_rate=round(rate, 6))

    def budget_full_at(self, n_start: int) -> int | None:
        """The refinement iteration at which growth from `n_start` Gaussians reaches cap_max (None: never)."""
        n = n_start
        for it in self.refinement_iterations():
            n = grown_count(n, self.cap_max, self.grow_rate)
            if n >= self.cap_max:
                return it
        return None

    def scaled(self, steps: int, reference_steps: int = 30_000, min_every: int = 10) -> "MCMCConfig":
        """This config with the refinement iterations (given for `reference_steps`) scaled
        linearly to a run of `steps`. Refinement is never more frequent than every `min_every`
        iterations (nor rarer than `refine_every`): relocated and new Gaussians restart with
        zero Adam moments and need a few steps before the next round judges them dead."""
        f = steps / reference_steps
        every = min(self.refine_every, max(min_every, round(self.refine_every * f)))
        return dataclasses.replace(self, refine_start_iter=round(self.refine_start_iter * f),
                                   refine_stop_iter=round(self.refine_stop_iter * f), refine_every=every)


@dataclass
class TrainConfig(Settings):
    """3DGS training settings. Learning rates, loss and the 3DGS density-control rules are the
    defaults of Kerbl et al. 2023 (their schedule scaled to `steps`); the run length, the Gaussian
    budget, the strategy, the start and the resolution are sized for a 2-core CPU and chosen by
    measurement (bench/README.md, "Reconstruction")."""

    label: ClassVar[str] = "train config"
    steps: int = setting(1000, "optimisation steps; the schedule is scaled to this (bench/README.md, "
                               "'Reconstruction')", ge=1)
    downscale: float | None = setting(None, "image downscale (8 = 1/8 resolution); auto: the smallest power of two "
                                            "that brings every view to 0.1 megapixel or less "
                                            "(scene.dataset.auto_downscale)", gt=0)
    test_every: int = setting(8, "hold out every N-th view for evaluation (0: none)", ge=0)
    sh_degree: int = setting(3, "maximum spherical-harmonics degree", ge=0, le=3)
    seed: int = setting(0, "random seed (start, view order, densification draws)")
    background: tuple[float, float, float] = setting((0.0, 0.0, 0.0), "background colour (RGB, 0-1)")
    ssim_weight: float = setting(0.2, "photometric loss: (1 - w) L1 + w (1 - SSIM)", ge=0, le=1)
    lr_means: float = setting(1.6e-4, "Adam learning rate of the means at the first step, times the scene extent",
                              gt=0)
    lr_means_final: float = setting(1.6e-6, "... decayed exponentially to this at the last step", gt=0)
    lr_sh0: float = setting(2.5e-3, "Adam learning rate of the base colours (SH band 0)", gt=0)
    lr_shN: float = setting(2.5e-3 / 20, "Adam learning rate of the higher SH bands", gt=0)
    lr_opacities: float = setting(5e-2, "Adam learning rate of the opacities (logits)", gt=0)
    lr_scales: float = setting(5e-3, "Adam learning rate of the scales (logs)", gt=0)
    lr_quats: float = setting(1e-3, "Adam learning rate of the rotations", gt=0)
    strategy: Literal["3dgs", "mcmc"] = setting(
        "mcmc", "densification: mcmc (relocation, growth to max_gaussians and position noise, Kheradmand et al. "
                "2024; reconstruct/mcmc.py) or 3dgs (clone/split/prune with opacity resets, Kerbl et al. 2023); "
                "why mcmc is the default: bench/README.md, 'Reconstruction'")
    densify_from: float = setting(500 / REFERENCE_STEPS, "3dgs: densification starts after this fraction of the "
                                                         "steps (500 of 30,000)", ge=0, le=1)
    densify_until: float = setting(15_000 / REFERENCE_STEPS, "3dgs: ... and stops after this fraction (15,000 of "
                                                             "30,000)", ge=0, le=1)
    densify_every: int = setting(100, "3dgs: refinement interval at 30,000 steps; short runs refine relatively "
                                      "more often (schedule())", ge=1)
    reset_every: float = setting(3000 / REFERENCE_STEPS, "3dgs: opacity reset interval as a fraction of the steps "
                                                         "(3,000 of 30,000)", gt=0, le=1)
    # A reset leaves every opacity at 0.01, and Adam needs a number of steps to bring the surfaces back
    # whatever the run length: scaled linearly, short runs would reset again before recovering.
    min_reset_interval: int = setting(300, "3dgs: opacity resets are never closer than this many steps (runs too "
                                           "short for that get one, schedule(); bench/README.md, 'Reconstruction')",
                                      ge=1)
    sh_increase_every: float = setting(1000 / REFERENCE_STEPS, "the SH degree rises by one after each such fraction "
                                                               "of the steps (1,000 of 30,000)", gt=0, le=1)
    grad_threshold: float = setting(2e-4, "3dgs: densify Gaussians whose mean screen-space gradient (NDC units per "
                                          "view) reaches this", gt=0)
    percent_dense: float = setting(0.01, "3dgs: candidates larger than this fraction of the scene extent are split, "
                                         "smaller ones cloned", gt=0)
    prune_opacity: float = setting(0.005, "opacity of dead Gaussians: pruned (3dgs), relocated (mcmc)", gt=0, lt=1)
    max_screen_size: float = setting(20.0, "3dgs: Gaussians wider than this many pixels are pruned after the first "
                                           "opacity reset", gt=0)
    max_world_size: float = setting(0.1, "3dgs: ... and those larger than this fraction of the scene extent", gt=0)
    max_gaussians: int = setting(100_000, "Gaussian budget: 3dgs stops densifying here, mcmc grows to it; sized for "
                                          "views of 0.1 megapixel or less on a CPU (bench/README.md, "
                                          "'Reconstruction')", ge=1)
    init: Literal[INITS] = setting(  # the starts reconstruct/init.py implements
        "auto", "initial Gaussians: auto (the dataset's points, else triangulated with pycolmap from the known poses, "
                "else random in the view frusta), points, sfm, frustum, box (random in the camera centres' box; "
                "misses scenes seen from outside)")
    init_random_points: int = setting(20_000, "Gaussians of a random start", ge=1)
    init_opacity: float = setting(0.1, "opacity of the initial Gaussians", gt=0, lt=1)
    checkpoint_every: int = setting(500, "steps between resumable checkpoints (SCENE/checkpoints/train.pt)", ge=1,
                                    resume_free=True)
    train_eval_views: int = setting(8, "training views scored at the end (evenly spaced; 0: none)", ge=0,
                                    resume_free=True)
    eval_every: int = setting(0, "score the held-out views every this many steps (metrics.json 'curve'; not counted "
                                 "in train_seconds); 0: only at the end", ge=0, resume_free=True)
    torch_threads: int = setting(1, "torch intra-op threads while training (0: unchanged); one is faster beside the "
                                    "numba rasterizer's threads (bench/README.md, 'torch threads and numba threads')",
                                 ge=0, resume_free=True)

    def check(self) -> list[str]:
        if self.strategy == "mcmc":
            self.mcmc_config()  # the MCMC settings derived from these must be valid too
        return []

    def mcmc_config(self) -> MCMCConfig:
        """The MCMC settings of this run: gsplat's defaults with the refinement iterations scaled
        to `steps`, the cap max_gaussians and the death threshold prune_opacity."""
        return MCMCConfig(cap_max=self.max_gaussians, min_opacity=self.prune_opacity).scaled(self.steps, REFERENCE_STEPS)

    def schedule(self) -> dict:
        """Step numbers of the scaled schedule, 1-based as in the original code: at iteration
        `it` (= step + 1) the SH degree is it // sh_increase_every; see densify.is_refine_step and
        is_reset_step for density control. With strategy "mcmc": the SH schedule and MCMC's
        refinement iterations (relocate and grow after refine_start < it < refine_stop, every
        refine_every)."""
        s = self.steps
        if self.strategy == "mcmc":
            m = self.mcmc_config()
            return {"refine_start": m.refine_start_iter, "refine_stop": m.refine_stop_iter,
                    "refine_every": m.refine_every, "sh_increase_every": max(1, round(self.sh_increase_every * s))}
        # Refinement every 100 of 30k steps; short runs refine relatively 4x as often (at least
        # every 10 steps) so that densification still gets a few dozen rounds.
        every = max(10, min(self.densify_every, round(self.densify_every * s / REFERENCE_STEPS * 4)))
        until = round(self.densify_until * s)
        # An opacity reset needs several refinement rounds and ~100-200 steps to recover.
        reset = max(3 * every, self.min_reset_interval, round(self.reset_every * s))
        if 2 * reset > until:
            # Too short for spaced resets: keep one, half-way through densification. Without it
            # the floaters it clears stay, and screen/world-size pruning (after the first reset)
            # never starts (bench/README.md, "Reconstruction").
            reset = max(3 * every, until // 2)
        return {
            "densify_from": max(every, round(self.densify_from * s)),
            "densify_until": until,
            "densify_every": every,
            "reset_every": reset,
            "sh_increase_every": max(1, round(self.sh_increase_every * s)),
        }


__all__ = ["INITS", "MCMCConfig", "REFERENCE_STEPS", "STRATEGIES", "TrainConfig"]
