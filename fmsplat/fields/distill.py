"""Distillation baseline (the Feature-3DGS / LangSplat family): low-dimensional per-Gaussian features,
rendered by the rasterizer and decoded to each model's space by a learned linear map.

Per space s with teacher dimension D_s, each Gaussian carries f_s (d_s values, default 32); a view
renders all slices in one rasterizer pass, the rendered (sum d_s, H, W) map is area-pooled to the
teacher's feature grid (a teacher cell sees its whole receptive field, so the average over the cell's
pixels is what it should match), and decoded as W_s f + b_s. Because the decoder is linear, decoding
after pooling equals pooling decoded pixels.

The decoder starts at the teacher's principal components (W_s = top-d_s PCA basis, b_s = mean of all
training features) and f at zero, so the first steps already fit the dominant directions. Loss per
space: (1 - cos) + MSE, averaged over the grid cells the rendered alpha covers. Geometry is frozen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fmsplat import atomic
from fmsplat.fields.base import (
    FeatureField,
    FieldError,
    FieldRender,
    SceneBundle,
    SpaceSpec,
    camera_at,
    open_scene,
    parse_space,
    resolve_config,
    splat,
    torch_threads,
)

DEFAULT_MODELS = ("effnet", "effnet-mid")
CHECKPOINT = "checkpoint.pt"


@dataclass
class Config:
    """Distillation baseline settings."""

    steps: int = 800  # optimisation steps (one training view each)
    dim: int = 32  # per-Gaussian feature dimension per space (Feature-3DGS uses 128 with a CNN decoder; LangSplat 3)
    lr_features: float = 2e-2  # Adam learning rate of the per-Gaussian features
    lr_decoder: float = 1e-3  # Adam learning rate of the linear decoders
    render_scale: float = 1.0  # render at this fraction of the image size before pooling to the teacher grid
    mse_weight: float = 1.0  # loss = (1 - cos) + mse_weight * MSE
    min_alpha: float = 0.5  # grid cells with less rendered coverage are left out of the loss
    checkpoint_every: int = 200
    seed: int = 0
    torch_threads: int = 1  # torch intra-op threads while fitting (0: unchanged); see fields.base.torch_threads


class DistillField(FeatureField):
    method = "distill"
    config_class = Config

    def __init__(self, gaussians, spaces: list[SpaceSpec], config: Config) -> None:
        super().__init__(gaussians, spaces, config)
        n, d = len(gaussians), config.dim
        self.features = torch.nn.Parameter(torch.zeros(n, d * len(self.spaces)))
        self.weights = torch.nn.ParameterDict({_p(a): torch.nn.Parameter(torch.zeros(s.dim, d)) for a, s in self.spaces.items()})
        self.biases = torch.nn.ParameterDict({_p(a): torch.nn.Parameter(torch.zeros(s.dim)) for a, s in self.spaces.items()})

    def _slice(self, alias: str) -> slice:
        i = list(self.spaces).index(alias)
        d = self.config.dim
        return slice(i * d, (i + 1) * d)

    def decode(self, alias: str, latent: torch.Tensor) -> torch.Tensor:
        """(d, h, w) or (N, d) latent -> (D, h, w) or (N, D) in the space's own units."""
        w, b = self.weights[_p(alias)], self.biases[_p(alias)]
        if latent.ndim == 3:
            return torch.einsum("Dd,dhw->Dhw", w, latent) + b[:, None, None]
        return latent @ w.T + b

    def render_latent(self, camera, size=None):
        cam = camera_at(camera, size)
        res = splat(self.gaussians, self.features, cam)
        return res, cam

    def render(self, camera, spaces=None, size=None) -> FieldRender:
        spaces = list(self.spaces) if spaces is None else list(spaces)
        for a in spaces:
            self.space(a)
        with torch.no_grad():
            res, cam = self.render_latent(camera, size)
            feats = {a: self.decode(a, res.image[self._slice(a)]) for a in spaces}
        return FieldRender(features=feats, alpha=res.alpha, depth=res.expected_depth(), camera=cam)

    def render_text_dots(self, camera, space, texts, size=None):
        """The decoder is linear (f = W·z + b), so texts·f = (texts W)·z + texts·b and
        |f|² = z̃ᵀ(W̃ᵀW̃)z̃ with z̃ = [z, 1]: products in the latent's d + 1 dimensions, never D."""
        self.space(space)
        w, b = self.weights[_p(space)].detach(), self.biases[_p(space)].detach()
        with torch.no_grad():
            res, cam = self.render_latent(camera, size)
            z = res.image[self._slice(space)].reshape(self.config.dim, -1)  # (d, P)
            z_aug = torch.cat([z, z.new_ones(1, z.shape[1])])
            w_aug = torch.cat([w, b[:, None]], dim=1)  # (D, d + 1)
            dots = (texts.float() @ w_aug) @ z_aug
            gram = (w_aug.T.double() @ w_aug.double()).float()
            sq = ((gram @ z_aug) * z_aug).sum(0)
            hw = (cam.height, cam.width)
        return dots.reshape(-1, *hw), sq.reshape(hw), FieldRender({}, res.alpha, res.expected_depth(), cam)

    def gaussian_features(self, space: str) -> torch.Tensor:
        self.space(space)
        with torch.no_grad():
            return self.decode(space, self.features[:, self._slice(space)])


FIELD = DistillField


def _p(alias: str) -> str:
    # ParameterDict keys may not contain '.'; aliases may (hub ids are shortened, options are not in aliases)
    return alias.replace(".", "_")


# ------------------------------------------------------------------------------------------ training
def _load_targets(bundle: SceneBundle, spaces: list[SpaceSpec], progress: bool) -> dict[str, list[torch.Tensor]]:
    targets = {}
    for spec in spaces:
        cache = bundle.feature_cache(spec, progress=progress)
        targets[spec.alias] = [cache.get(bundle.view_name(i)) for i in range(len(bundle.dataset))]
    return targets


def _pca_init(field_: DistillField, alias: str, views: list[torch.Tensor]) -> None:
    d = field_.config.dim
    flat = torch.cat([v.reshape(v.shape[0], -1) for v in views], dim=1).T  # (P, D)
    mean = flat.mean(0)
    k = min(d, flat.shape[0], flat.shape[1])
    _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)
    basis = torch.zeros(flat.shape[1], d)
    basis[:, :k] = v[:k].T
    with torch.no_grad():
        field_.weights[_p(alias)].copy_(basis)
        field_.biases[_p(alias)].copy_(mean)


def pool_to(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Area-average a (C, H, W) map onto a (C, h, w) grid (exact cell means when H, W divide evenly)."""
    if tuple(image.shape[-2:]) == tuple(grid):
        return image
    return F.adaptive_avg_pool2d(image[None], grid)[0]


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


def _resolve_config(config: Config | None, overrides: dict) -> Config:
    return resolve_config(Config, "distill", config, overrides)


def fit(scene_dir, models=None, config: Config | None = None, resume: bool = False, progress: bool = True,
        bundle: SceneBundle | None = None, **overrides) -> DistillField:
    """Fit the distillation baseline on the trained scene `scene_dir`; saves SCENE/fields/distill/."""
    cfg = _resolve_config(config, overrides)
    with torch_threads(cfg.torch_threads):
        return _fit(scene_dir, models, cfg, resume, progress, bundle)


def _fit(scene_dir, models, cfg: Config, resume: bool, progress: bool, bundle: SceneBundle | None) -> DistillField:
    bundle = bundle or open_scene(scene_dir)
    spaces = [parse_space(m) for m in (models or DEFAULT_MODELS)]
    if len({s.alias for s in spaces}) != len(spaces):
        raise FieldError(f"distill: two models share an alias in {[s.alias for s in spaces]}")
    data = bundle.dataset
    if not data.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    targets = _load_targets(bundle, spaces, progress)

    torch.manual_seed(cfg.seed)
    field_ = DistillField(bundle.gaussians, spaces, cfg)
    for spec in spaces:
        _pca_init(field_, spec.alias, [targets[spec.alias][i] for i in data.train_indices])
    optimizer = torch.optim.Adam([
        {"params": [field_.features], "lr": cfg.lr_features},
        {"params": list(field_.weights.values()) + list(field_.biases.values()), "lr": cfg.lr_decoder},
    ])
    ckpt = Path(scene_dir) / "fields" / DistillField.method / CHECKPOINT
    start, elapsed = 0, 0.0
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if state["num_gaussians"] != len(bundle.gaussians) or state["aliases"] != list(field_.spaces):
            raise FieldError(f"{ckpt}: written for another scene or other models; delete it to start afresh")
        field_.load_state_dict(state["field"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state["seconds"])

    generator = torch.Generator().manual_seed(cfg.seed)
    if start:
        generator.set_state(state["generator"])
    train = torch.tensor(data.train_indices)
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="distill", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        i = int(train[torch.randint(len(train), (1,), generator=generator)])
        cam = data.cameras[i]
        size = (max(1, round(cam.width * cfg.render_scale)), max(1, round(cam.height * cfg.render_scale)))
        res, _ = field_.render_latent(cam, size)
        loss = 0.0
        for alias in field_.spaces:
            target = targets[alias][i]
            grid = tuple(target.shape[-2:])
            pred = field_.decode(alias, pool_to(res.image[field_._slice(alias)], grid))
            valid = pool_to(res.alpha.detach()[None], grid)[0] >= cfg.min_alpha
            loss = loss + feature_loss(pred, target, valid, cfg.mse_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            state = {"step": done, "seconds": elapsed + time.perf_counter() - t0, "field": field_.state_dict(),
                     "optimizer": optimizer.state_dict(), "num_gaussians": len(bundle.gaussians),
                     "aliases": list(field_.spaces), "generator": generator.get_state()}
            atomic.write_with(ckpt, lambda tmp: torch.save(state, tmp))
    bar.close()
    field_.summary = {"steps": cfg.steps, "fit_seconds": round(elapsed + time.perf_counter() - t0, 2),
                      "final_loss": float(loss.detach()) if cfg.steps > start else None,
                      "bytes_per_gaussian": field_.features.shape[1] * 4,
                      "decoder_bytes": sum(p.numel() * 4 for p in list(field_.weights.values()) + list(field_.biases.values()))}
    field_.eval()
    field_.save(scene_dir)
    if ckpt.exists():
        ckpt.unlink()
    return field_


__all__ = ["Config", "DistillField", "FIELD", "feature_loss", "fit", "pool_to"]
