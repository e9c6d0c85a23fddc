"""Training-free lifting: per-Gaussian features as blending-weighted means of the teacher's pixel features.

A rendered feature is a weighted sum of per-Gaussian features, the weight of Gaussian g at pixel p
being w_gp = alpha_gp x transmittance. One pass of the rasterizer's adjoint per training view
(`fmsplat.render.accumulate`) therefore gives every Gaussian sum_p w_gp F_p and sum_p w_gp, summed
over views; their ratio is the feature that best explains, in the least-squares sense of each
Gaussian taken alone, the pixels it paints (the idea of "Occam's LGS", Cheng et al. 2024). No
optimisation, no steps: seconds where distillation takes minutes.

The map lifted is linear in the features, so each space is first projected onto its training features'
top-`dim` principal components (the distillation baseline's decoder), and all spaces' latents plus
the weight travel as the channels of one pass: the field stored is exactly a `DistillField` (latents
and linear decoders), so it renders, queries and warm-starts like one. `dim=0` lifts full features.

Teacher maps are on their own coarse grid: each is projected, bilinearly resampled to the lifting
resolution (`render_scale` of the image), and weighted per pixel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from fmsplat.fields.base import FieldError, SpaceSpec, param_key, parse_spaces, resample
from fmsplat.fields.configs import LiftConfig as Config
from fmsplat.fields.latent import DEFAULT_MODELS, DistillField, pca_init
from fmsplat.fields.loop import finish, fit_entry
from fmsplat.parallel import resolve_address
from fmsplat.render import accumulate
from fmsplat.workspace import Workspace
from fmsplat.fields.base import teacher_views

# Settings earlier LiftConfigs had and saved with a field (see LiftField.from_saved).
RETIRED_SETTINGS = ("steps", "checkpoint_every", "seed")

# Channels per adjoint pass: the kernel keeps (threads x N x channels) floats.
MAX_CHANNELS = 96


class LiftField(DistillField):
    method = "lift"
    config_class = Config

    def latent_dim(self, spec: SpaceSpec) -> int:
        return self.config.dim if self.config.dim else spec.dim

    @classmethod
    def from_saved(cls, gaussians, spaces, config: dict, tensors: dict, meta: dict) -> "LiftField":
        # Lift fields saved before LiftConfig lost its never-read steps, checkpoint_every and seed
        # still name them in field.json; drop just those so that such fields keep loading.
        config = {k: v for k, v in config.items() if k not in RETIRED_SETTINGS}
        return super().from_saved(gaussians, spaces, config, tensors, meta)


FIELD = LiftField


def lift_view(geometry: tuple, cam, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One view's adjoint pass: (sums (N, C): sum_p w_gp map_p, weights (N,): sum_p w_gp) for the activated
    `geometry` (means, quats, scales, opacities) seen by `cam`, the map (C, h, w) resampled to its size."""
    means, quats, scales, opacities = geometry
    signal = resample(fmap.float(), (cam.height, cam.width)).permute(1, 2, 0)
    sums = torch.zeros(means.shape[0], fmap.shape[0])
    weights = torch.zeros(means.shape[0])
    for c0 in range(0, fmap.shape[0], MAX_CHANNELS):
        sums[:, c0:c0 + MAX_CHANNELS], weights = accumulate(
            means, quats, scales, opacities, signal[..., c0:c0 + MAX_CHANNELS].contiguous(), cam.viewmat_tensor(),
            cam.K_tensor())
    return sums, weights


def weighted_means(sums: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sums / weights per Gaussian, zero where a Gaussian has no weight."""
    return torch.where(weights[:, None] > 0, sums / weights.clamp_min(1e-12)[:, None], torch.zeros(()))


def lift_maps(gaussians, cameras, maps, progress: bool = False, desc: str = "lift") -> tuple[torch.Tensor, torch.Tensor]:
    """Lift per-view maps onto the Gaussians: `maps[k]` (C, h, w) seen by `cameras[k]` (rendered at the
    camera's size; the map resampled to it). Returns (means (N, C): sum_views sum_p w_gp map_p / sum w_gp,
    zero where a Gaussian has no weight; weights (N,): sum_views sum_p w_gp)."""
    geometry = tuple(t.detach() for t in gaussians.activated())
    n = geometry[0].shape[0]
    sums = torch.zeros(n, int(maps[0].shape[0]) if len(maps) else 0)
    weights = torch.zeros(n)
    for cam, fmap in tqdm(list(zip(cameras, maps)), desc=desc, disable=not progress, dynamic_ncols=True):
        s, w = lift_view(geometry, cam, fmap)
        sums += s
        weights += w
    return weighted_means(sums, weights), weights


class ViewLifter:
    """Lifts one training view: projects each space's teacher map onto its basis, resamples the latents to the
    view's camera and runs the adjoint pass. The same object serves the local loop and a Ray worker (it
    pickles as the Gaussians' geometry, the cameras and bases, and lazy map sequences such as CachedMaps)."""

    def __init__(self, geometry: tuple, cameras: dict, targets: dict, bases: dict, normalize: bool) -> None:
        self.geometry = tuple(t.detach() for t in geometry)
        self.cameras, self.targets, self.bases, self.normalize = cameras, targets, bases, normalize

    def latent_map(self, i: int) -> torch.Tensor:
        """(sum d, h, w) latents of view i on the finest of the spaces' grids."""
        parts = []
        for a, (w, b) in self.bases.items():
            t = self.targets[a][i].float()
            if self.normalize:  # every cell's direction counts alike, at the mean feature's length
                t = t / t.norm(dim=0, keepdim=True).clamp_min(1e-12) * b.norm()
            parts.append(torch.einsum("Dd,Dhw->dhw", w, t - b[:, None, None]))
        grid = (max(z.shape[-2] for z in parts), max(z.shape[-1] for z in parts))
        return torch.cat([resample(z, grid) for z in parts])

    def lift(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums (N, C), weights (N,)) of view i: sum_p w_gp latent_p and sum_p w_gp."""
        return lift_view(self.geometry, self.cameras[i], self.latent_map(i))


def lift_spaces(bundle: Workspace, targets: dict, bases: dict, render_scale: float, normalize: bool = False,
                progress: bool = True, ray: str | None = None, workers: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, slice]]:
    """Lift every space at once: `bases[alias]` = (W (D, d), b (D,)) projects the teacher's map of `alias`
    (`targets[alias][i]`, view i) to d latents. Returns (latents (N, sum d), weights (N,), alias -> slice of
    the latents). With `ray` (a cluster address, fmsplat.parallel), each view is one task on `workers`
    actors and the driver adds up the per-view sums as they arrive: the same result up to the order of
    the float additions."""
    data = bundle.dataset
    views = data.train_indices
    slices, start = {}, 0
    for alias, (w, _) in bases.items():
        slices[alias], start = slice(start, start + w.shape[1]), start + w.shape[1]
    lifter = ViewLifter(bundle.gaussians.activated(), {i: data.cameras[i].scaled(render_scale) for i in views},
                        targets, bases, normalize)
    n = len(bundle.gaussians)
    sums, weights = torch.zeros(n, start), torch.zeros(n)

    def add(_, result) -> None:
        sums.add_(result[0])
        weights.add_(result[1])

    if ray is not None:
        from fmsplat.parallel import map_views

        map_views(lambda lf=lifter: lf, "lift", list(views), add, address=ray, workers=workers, progress=progress,
                  desc="lift")
    else:
        for i in tqdm(views, desc="lift", disable=not progress, dynamic_ncols=True):
            add(i, lifter.lift(i))
    return weighted_means(sums, weights), weights, slices


def lift_latents(field_: DistillField, bundle: Workspace, targets: dict, render_scale: float, min_weight: float,
                 normalize: bool = False, progress: bool = True, ray: str | None = None,
                 workers: int | None = None) -> dict:
    """Set `field_`'s decoders to each space's PCA of the training features and its latents to the lifted
    latents (every space in one pass per view). Returns statistics for the summary."""
    views = bundle.dataset.train_indices
    for alias in field_.spaces:
        pca_init(field_, alias, _Views(targets[alias], views))
    bases = {a: (field_.weights[param_key(a)].detach(), field_.biases[param_key(a)].detach()) for a in field_.spaces}
    t0 = time.perf_counter()
    lifted, weights, _ = lift_spaces(bundle, targets, bases, render_scale, normalize, progress, ray, workers)
    unseen = weights < min_weight
    lifted[unseen] = 0.0
    with torch.no_grad():
        field_.features.copy_(lifted)
    return {"lift_seconds": round(time.perf_counter() - t0, 2), "lift_views": len(views),
            "unseen_gaussians": int(unseen.sum()), "lift_render_scale": render_scale}


class _Views(Sequence):
    """maps[i] for i in views, lazily (a CachedMaps stays on disk)."""

    def __init__(self, maps, views) -> None:
        self.maps, self.views = maps, list(views)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, k):
        return self.maps[self.views[k]]


def _fit(scene_dir, models, cfg: Config, resume: bool, progress: bool, bundle: Workspace | None) -> LiftField:
    """Lift the teacher features onto the Gaussians of `scene_dir` (no optimisation); saves SCENE/fields/lift/.
    The teacher maps stream from the feature cache one view at a time (memory flat in the number of views);
    with `ray` set, extraction and lifting run on that Ray cluster (fmsplat.parallel)."""
    t0 = time.perf_counter()
    bundle = bundle or Workspace.open(scene_dir)
    spaces = parse_spaces(models, DEFAULT_MODELS, "lift")
    if not bundle.dataset.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    ray = resolve_address(cfg.ray or None)
    workers = cfg.workers or None
    targets = teacher_views(bundle, spaces, progress, ray=ray, workers=workers)
    field_ = LiftField(bundle.gaussians, spaces, cfg)
    stats = lift_latents(field_, bundle, targets, cfg.render_scale, cfg.min_weight, cfg.normalize, progress, ray,
                         workers)
    field_.summary = {"steps": 0, "fit_seconds": round(time.perf_counter() - t0, 2), **stats,
                      "bytes_per_gaussian": field_.features.shape[1] * 4,
                      "decoder_bytes": sum(p.numel() * 4 for p in list(field_.weights.values()) + list(field_.biases.values()))}
    finish(field_, scene_dir)
    return field_


fit = fit_entry("lift", _fit)

__all__ = ["Config", "FIELD", "LiftField", "fit", "lift_latents", "lift_maps", "lift_spaces", "lift_view", "ViewLifter"]
