"""The Gaussian model: a plain container of per-Gaussian torch tensors.

Parameters are stored raw, as 3DGS optimises them: log-scales, logit-opacities, unnormalised
wxyz quaternions, SH coefficients (N, K, 3). The trainer owns optimisation (it may wrap these
tensors in parameters); this class only builds, slices, converts and saves them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from fmsplat.gaussians.ply import read_gaussian_ply, write_gaussian_ply
from fmsplat.gaussians.sh import MAX_SH_DEGREE, num_sh_coeffs, rgb_to_sh, sh_colors, sh_degree_from_coeffs

CORE_KEYS = ("means", "quats", "scales", "opacities", "sh")
EXTRA_PREFIX = "extra."


@dataclass
class GaussianModel:
    """N Gaussians. means (N,3); quats (N,4) wxyz raw; scales (N,3) log; opacities (N,) logit;
    sh (N,K,3) with K = (sh_degree+1)^2 and sh[:, 0] the DC term; extras: named (N, ...) tensors."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor
    sh_degree: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3),
            "quats": (n, 4),
            "scales": (n, 3),
            "opacities": (n,),
            "sh": (n, num_sh_coeffs(self.sh_degree), 3),
        }
        if not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {self.sh_degree}")
        for name, shape in expected.items():
            actual = tuple(getattr(self, name).shape)
            if actual != shape:
                raise ValueError(f"GaussianModel.{name} has shape {actual}, expected {shape}")
        for name, tensor in self.extras.items():
            if tensor.shape[0] != n:
                raise ValueError(f"extra tensor {name!r} has {tensor.shape[0]} rows for {n} Gaussians")

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def from_points(
        cls,
        xyz,
        rgb,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        min_scale: float = 1e-4,
        max_scale: float | None = None,
    ) -> "GaussianModel":
        """Isotropic Gaussians at `xyz` (P,3) coloured `rgb` (P,3) in [0,1], as 3DGS initialises
        from SfM points: scale = mean distance to the 3 nearest neighbours, clamped to
        [min_scale, max_scale]; identity rotations; opacity `init_opacity`; only the DC term set."""
        xyz_np = np.asarray(torch.as_tensor(xyz).detach().cpu(), dtype=np.float64)
        rgb_np = np.asarray(torch.as_tensor(rgb).detach().cpu(), dtype=np.float64)
        if xyz_np.ndim != 2 or xyz_np.shape[1] != 3 or rgb_np.shape != xyz_np.shape:
            raise ValueError(f"xyz and rgb must both be (P, 3); got {xyz_np.shape} and {rgb_np.shape}")
        if len(xyz_np) < 2:
            raise ValueError(f"need at least 2 points to size Gaussians from neighbour distances, got {len(xyz_np)}")
        if not np.isfinite(xyz_np).all():
            raise ValueError("xyz contains NaN or infinite coordinates")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")

        k = min(4, len(xyz_np))  # the point itself plus up to 3 neighbours
        dists, _ = cKDTree(xyz_np).query(xyz_np, k=k)
        mean_dist = dists[:, 1:].mean(axis=1)
        mean_dist = np.clip(mean_dist, min_scale, max_scale)
        n = len(xyz_np)
        log_scale = torch.from_numpy(np.log(mean_dist)).float()[:, None].expand(n, 3).contiguous()

        sh = torch.zeros(n, num_sh_coeffs(sh_degree), 3)
        sh[:, 0] = rgb_to_sh(torch.from_numpy(rgb_np).float())
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        opacities = torch.full((n,), float(np.log(init_opacity / (1.0 - init_opacity))))
        return cls(
            means=torch.from_numpy(xyz_np).float(),
            quats=quats,
            scales=log_scale,
            opacities=opacities,
            sh=sh,
            sh_degree=sh_degree,
        )

    @classmethod
    def random(cls, n: int, lo, hi, sh_degree: int = 3, seed: int = 0, init_opacity: float = 0.1) -> "GaussianModel":
        """`n` Gaussians uniformly inside the box [lo, hi] with random colours (3DGS's random init)."""
        lo_np = np.broadcast_to(np.asarray(lo, dtype=np.float64), (3,))
        hi_np = np.broadcast_to(np.asarray(hi, dtype=np.float64), (3,))
        if not (hi_np > lo_np).all():
            raise ValueError(f"random init needs hi > lo on every axis, got lo={lo_np}, hi={hi_np}")
        rng = np.random.default_rng(seed)
        xyz = lo_np + rng.random((n, 3)) * (hi_np - lo_np)
        rgb = rng.random((n, 3))
        return cls.from_points(xyz, rgb, sh_degree=sh_degree, init_opacity=init_opacity)

    # ----------------------------------------------------------------------------- accessors
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def activated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means, unit quats, scales = exp(log-scales), opacities = sigmoid(logits))."""
        quats = self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.means, quats, torch.exp(self.scales), torch.sigmoid(self.opacities)

    def colors(self, camera_center, degree: int | None = None) -> torch.Tensor:
        """View-dependent RGB (N,3) seen from `camera_center` (3,), clamped below at 0 as in 3DGS."""
        degree = self.sh_degree if degree is None else degree
        if degree > self.sh_degree:
            raise ValueError(f"degree {degree} exceeds the model's sh_degree {self.sh_degree}")
        center = torch.as_tensor(camera_center, dtype=self.means.dtype, device=self.means.device).reshape(1, 3)
        dirs = self.means - center
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return sh_colors(self.sh[:, :1], self.sh[:, 1:], degree, dirs)

    # ----------------------------------------------------------------------------- transforms
    def _map(self, fn) -> "GaussianModel":
        return GaussianModel(
            means=fn(self.means),
            quats=fn(self.quats),
            scales=fn(self.scales),
            opacities=fn(self.opacities),
            sh=fn(self.sh),
            sh_degree=self.sh_degree,
            extras={name: fn(t) for name, t in self.extras.items()},
        )

    def subset(self, mask_or_index) -> "GaussianModel":
        """The Gaussians selected by a boolean mask (N,) or an index tensor/array."""
        index = torch.as_tensor(mask_or_index, device=self.means.device)
        if index.dtype == torch.bool and index.shape != (len(self),):
            raise ValueError(f"boolean mask has shape {tuple(index.shape)}, expected ({len(self)},)")
        return self._map(lambda t: t[index])

    def to(self, device) -> "GaussianModel":
        return self._map(lambda t: t.to(device))

    def detach(self) -> "GaussianModel":
        return self._map(lambda t: t.detach())

    def fingerprint(self) -> str:
        """A short digest of the Gaussians' core tensors (float32 bytes, in order) and SH degree: artefacts
        record it to name the Gaussians they index, so a re-ordered, edited or foreign model is noticed."""
        digest = hashlib.sha256(str(self.sh_degree).encode())
        for name in CORE_KEYS:
            digest.update(getattr(self, name).detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:20]

    # ----------------------------------------------------------------------------- training
    def param_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors 3DGS optimises, one per Adam group as the original code keeps them: means,
        quats, scales, opacities, sh0 (N, 1, 3) and shN (N, K-1, 3)."""
        return {"means": self.means, "quats": self.quats, "scales": self.scales, "opacities": self.opacities,
                "sh0": self.sh[:, :1], "shN": self.sh[:, 1:]}

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """`param_tensors` as fresh leaf parameters (float32, contiguous copies)."""
        return {k: torch.nn.Parameter(v.detach().float().clone().contiguous()) for k, v in self.param_tensors().items()}

    @classmethod
    def from_params(cls, params: dict, sh_degree: int) -> "GaussianModel":
        """Inverse of `param_tensors` (a trainer's parameter dict), detached."""
        return cls(means=params["means"].detach(), quats=params["quats"].detach(), scales=params["scales"].detach(),
                   opacities=params["opacities"].detach(), sh=torch.cat([params["sh0"], params["shN"]], 1).detach(),
                   sh_degree=sh_degree)

    # ----------------------------------------------------------------------------- I/O
    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor mapping (extras under 'extra.<name>'), e.g. for safetensors."""
        out = {name: getattr(self, name) for name in CORE_KEYS}
        out.update({EXTRA_PREFIX + name: t for name, t in self.extras.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], sh_degree: int | None = None) -> "GaussianModel":
        """Inverse of tensors(); sh_degree defaults to the one implied by sh's coefficient count."""
        missing = [name for name in CORE_KEYS if name not in tensors]
        if missing:
            raise KeyError(f"Gaussian tensors are missing {missing} (have {sorted(tensors)})")
        unknown = [k for k in tensors if k not in CORE_KEYS and not k.startswith(EXTRA_PREFIX)]
        if unknown:
            raise KeyError(f"unknown Gaussian tensor names {unknown}; extras must be prefixed {EXTRA_PREFIX!r}")
        if sh_degree is None:
            sh_degree = sh_degree_from_coeffs(tensors["sh"].shape[1])
        return cls(
            **{name: tensors[name] for name in CORE_KEYS},
            sh_degree=sh_degree,
            extras={k[len(EXTRA_PREFIX):]: t for k, t in tensors.items() if k.startswith(EXTRA_PREFIX)},
        )

    def save_ply(self, path: str | Path) -> None:
        """Write a 3DGS-layout PLY (opens in standard viewers), atomically."""
        write_gaussian_ply(path, self.means, self.quats, self.scales, self.opacities, self.sh, self.extras)

    @classmethod
    def load_ply(cls, path: str | Path) -> "GaussianModel":
        """Read a PLY from this package or any standard 3DGS trainer (SH degree from f_rest count)."""
        data = read_gaussian_ply(path)
        return cls(
            means=data["means"],
            quats=data["quats"],
            scales=data["scales"],
            opacities=data["opacities"],
            sh=data["sh"],
            sh_degree=data["sh_degree"],
            extras=data["extras"],
        )
