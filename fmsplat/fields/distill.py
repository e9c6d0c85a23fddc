"""Distillation baseline (the Feature-3DGS / LangSplat family): low-dimensional per-Gaussian features,
rendered by the rasterizer and decoded to each model's space by a learned linear map.

Per space s with teacher dimension D_s, each Gaussian carries f_s (d_s values, default 32); a view
renders all slices in one rasterizer pass, the rendered (sum d_s, H, W) map is area-pooled to the
teacher's feature grid (a teacher cell sees its whole receptive field, so the average over the cell's
pixels is what it should match), and decoded as W_s f + b_s. Because the decoder is linear, decoding
after pooling equals pooling decoded pixels.

The decoder starts at the teacher's principal components (W_s = top-d_s PCA basis, b_s = mean of all
training features) and f at the lifted latents (fields.lift: each Gaussian's blending-weighted mean of
the projected teacher features, seconds, no steps), so step 0 already renders the scene's features;
`warm_start=False` starts f at zero as published. Loss per
space: (1 - cos) + MSE, averaged over the grid cells the rendered alpha covers. Geometry is frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmsplat.fields.base import FieldError, parse_spaces, resample
from fmsplat.fields.configs import DistillConfig as Config
from fmsplat.fields.latent import DEFAULT_MODELS, DistillField, pca_basis, pca_init  # noqa: F401 (pca_basis: API)
from fmsplat.fields.lift import lift_latents
from fmsplat.fields.loop import finish, fit_entry, run_fit, scene_identity
from fmsplat.workspace import Workspace
from fmsplat.fields.base import teacher_views

# warm starts lift with LiftConfig's defaults
LIFT_SCALE, LIFT_MIN_WEIGHT = 0.25, 1e-3


FIELD = DistillField


# ------------------------------------------------------------------------------------------ training
pool_to = resample  # area average onto the teacher grid


def feature_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, mse_weight: float) -> torch.Tensor:
    """(1 - cos) + mse_weight * relative MSE over the valid cells of (D, h, w) maps.

    The MSE is divided by the target's mean square, so that one weight suits every model
    (effnet's 1280-d activations and a unit-norm CLIP map differ in scale by orders of magnitude)."""
    p = pred.flatten(1).T[valid.flatten()]
    t = target.flatten(1).T[valid.flatten()]
    if p.shape[0] == 0:
        return pred.sum() * 0.0
    cos = F.cosine_similarity(p, t, dim=-1).mean()
    return (1.0 - cos) + mse_weight * F.mse_loss(p, t) / t.pow(2).mean().clamp_min(1e-12)


def _fit(scene_dir, models, cfg: Config, resume: bool, progress: bool, bundle: Workspace | None) -> DistillField:
    """Fit the distillation baseline on the trained scene `scene_dir`; saves SCENE/fields/distill/."""
    bundle = bundle or Workspace.open(scene_dir)
    spaces = parse_spaces(models, DEFAULT_MODELS, "distill")
    data = bundle.dataset
    if not data.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    targets = teacher_views(bundle, spaces, progress)  # read per step from the cache: memory flat in the views

    torch.manual_seed(cfg.seed)
    field_ = DistillField(bundle.gaussians, spaces, cfg)
    warm = {}
    if cfg.warm_start:  # decoders at the PCA, latents lifted from the views (fields.lift)

        warm = lift_latents(field_, bundle, targets, LIFT_SCALE, LIFT_MIN_WEIGHT, progress=progress)
    else:
        for spec in spaces:
            pca_init(field_, spec.alias, (targets[spec.alias][i] for i in data.train_indices))
    decoders = list(field_.weights.values()) + list(field_.biases.values())
    optimizer = torch.optim.Adam([{"params": [field_.features], "lr": cfg.lr_features},
                                  {"params": decoders, "lr": cfg.lr_decoder}])

    def loss(step, i, generator):
        res = field_.splat_raw(data.cameras[i].scaled(cfg.render_scale))
        total = 0.0
        for alias in field_.spaces:
            target = targets[alias][i]
            grid = tuple(target.shape[-2:])
            pred = field_.decode(alias, pool_to(res.image[field_._slice(alias)], grid))
            valid = pool_to(res.alpha.detach()[None], grid)[0] >= cfg.min_alpha
            total = total + feature_loss(pred, target, valid, cfg.mse_weight)
        return total, {}

    run = run_fit(method="distill", scene_dir=scene_dir, config=cfg, scene=scene_identity(bundle, spaces),
                  views=data.train_indices, optimizer=optimizer, loss=loss, state=field_.state_dict,
                  load=field_.load_state_dict, resume=resume, progress=progress, field=field_)
    field_.summary = {**run, **warm, "warm_start": cfg.warm_start, "final_loss": (run["final"] or {}).get("loss"),
                      "bytes_per_gaussian": field_.features.shape[1] * 4,
                      "decoder_bytes": sum(p.numel() * 4 for p in decoders)}
    finish(field_, scene_dir)
    return field_


fit = fit_entry("distill", _fit)

__all__ = ["Config", "DistillField", "FIELD", "feature_loss", "fit", "pool_to"]
