"""The latent-code field of distillation and lifting: per-Gaussian low-dimensional features, rendered by
the rasterizer and decoded to each model's space by a linear map that starts at the teacher's principal
components. `fields.distill` trains it; `fields.lift` fills it with no training (and distill's warm start
uses that lifting), so both sit above this module.
"""

from __future__ import annotations

import torch

from fmsplat.fields.base import FeatureField, SpaceSpec, param_key as _p, splat
from fmsplat.fields.configs import DistillConfig as Config

DEFAULT_MODELS = ("effnet", "effnet-mid")


class DistillField(FeatureField):
    method = "distill"
    config_class = Config
    per_gaussian = ("features",)

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


def pca_init(field_: DistillField, alias: str, views: list[torch.Tensor]) -> None:
    """Decoder of `alias` = the training features' mean and top principal directions (orthonormal
    columns; the identity when the latent keeps every dimension)."""
    basis, mean = pca_basis(views, field_.latent_dims[alias])
    with torch.no_grad():
        field_.weights[_p(alias)].copy_(basis)
        field_.biases[_p(alias)].copy_(mean)


__all__ = ["DEFAULT_MODELS", "DistillField", "pca_basis", "pca_init"]
