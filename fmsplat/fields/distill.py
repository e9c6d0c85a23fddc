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

from fmsplat.fields.base import FeatureField, FieldError, SceneBundle, SpaceSpec, open_scene, \
    param_key as _p, parse_spaces, resample, splat
from fmsplat.fields.configs import DistillConfig as Config
from fmsplat.fields.loop import finish, fit_entry, run_fit, scene_identity

DEFAULT_MODELS = ("effnet", "effnet-mid")
# warm starts lift with LiftConfig's defaults
LIFT_SCALE, LIFT_MIN_WEIGHT = 0.25, 1e-3


class DistillField(FeatureField):
    method = "distill"
    config_class = Config

    def __init__(self, gaussians, spaces: list[SpaceSpec], config: Config) -> None:
        super().__init__(gaussians, spaces, config)
        self.latent_dims = {a: self.latent_dim(s) for a, s in self.spaces.items()}
        self._slices, start = {}, 0
        for a, d in self.latent_dims.items():
            self._slices[a], start = slice(start, start + d), start + d
        self.features = torch.nn.Parameter(torch.zeros(len(gaussians), start))
        self.weights = torch.nn.ParameterDict({_p(a): torch.nn.Parameter(torch.zeros(s.dim, self.latent_dims[a]))
                                               for a, s in self.spaces.items()})
        self.biases = torch.nn.ParameterDict({_p(a): torch.nn.Parameter(torch.zeros(s.dim)) for a, s in self.spaces.items()})

    def latent_dim(self, spec: SpaceSpec) -> int:
        """Latent values per Gaussian for `spec`."""
        return self.config.dim

    def _slice(self, alias: str) -> slice:
        return self._slices[alias]

    def decode(self, alias: str, latent: torch.Tensor) -> torch.Tensor:
        """(d, h, w) or (N, d) latent -> (D, h, w) or (N, D) in the space's own units."""
        w, b = self.weights[_p(alias)], self.biases[_p(alias)]
        if latent.ndim == 3:
            return torch.einsum("Dd,dhw->Dhw", w, latent) + b[:, None, None]
        return latent @ w.T + b

    def splat_raw(self, camera):
        return splat(self.gaussians, self.features, camera)

    def decode_image(self, alias, image):
        return self.decode(alias, image[self._slice(alias)])

    def linear_head(self, space, image):
        """The decoder is linear: products in the latent's d + 1 dimensions (FeatureField.render_text_dots)."""
        z = image[self._slice(space)].reshape(self.latent_dims[space], -1).T
        return [z], self.weights[_p(space)].detach(), self.biases[_p(space)].detach()

    def gaussian_features(self, space: str) -> torch.Tensor:
        self.space(space)
        with torch.no_grad():
            return self.decode(space, self.features[:, self._slice(space)])


FIELD = DistillField


# ------------------------------------------------------------------------------------------ training
def pca_basis(views, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(basis (D, d) with orthonormal columns, mean (D,)) of the features of (D, h, w) maps: their top-d
    principal directions (the identity when d covers every dimension). The maps are read once, one at a
    time (a lazy sequence such as CachedMaps, or a generator, streams from disk): the mean and the D x D
    scatter are summed in float64, so memory does not grow with the number of views."""
    total, sums, scatter, dim = 0, None, None, None
    for v in views:
        flat = v.reshape(v.shape[0], -1).double()  # (D, p)
        if sums is None:
            dim = flat.shape[0]
            sums = torch.zeros(dim, dtype=torch.float64)
            scatter = torch.zeros(dim, dim, dtype=torch.float64) if d < dim else None
        total += flat.shape[1]
        sums += flat.sum(1)
        if scatter is not None:
            scatter += flat @ flat.T
    if sums is None or total == 0:
        raise ValueError("pca_basis: no features given")
    mean = sums / total
    if scatter is None:
        return torch.eye(dim, d), mean.float()
    cov = scatter / total - torch.outer(mean, mean)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    k = min(d, total)
    basis = torch.zeros(dim, d)
    basis[:, :k] = vecs[:, -k:].flip(1).float()
    return basis, mean.float()


def _pca_init(field_: DistillField, alias: str, views: list[torch.Tensor]) -> None:
    """Decoder of `alias` = the training features' mean and top principal directions (orthonormal
    columns; the identity when the latent keeps every dimension)."""
    basis, mean = pca_basis(views, field_.latent_dims[alias])
    with torch.no_grad():
        field_.weights[_p(alias)].copy_(basis)
        field_.biases[_p(alias)].copy_(mean)


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


def _fit(scene_dir, models, cfg: Config, resume: bool, progress: bool, bundle: SceneBundle | None) -> DistillField:
    """Fit the distillation baseline on the trained scene `scene_dir`; saves SCENE/fields/distill/."""
    bundle = bundle or open_scene(scene_dir)
    spaces = parse_spaces(models, DEFAULT_MODELS, "distill")
    data = bundle.dataset
    if not data.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    targets = bundle.target_views(spaces, progress)  # read per step from the cache: memory flat in the views

    torch.manual_seed(cfg.seed)
    field_ = DistillField(bundle.gaussians, spaces, cfg)
    warm = {}
    if cfg.warm_start:  # decoders at the PCA, latents lifted from the views (fields.lift)
        from fmsplat.fields.lift import lift_latents

        warm = lift_latents(field_, bundle, targets, LIFT_SCALE, LIFT_MIN_WEIGHT, progress=progress)
    else:
        for spec in spaces:
            _pca_init(field_, spec.alias, (targets[spec.alias][i] for i in data.train_indices))
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
