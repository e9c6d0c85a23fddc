"""What every feature field shares: the spaces it reproduces, the scene it lives on, one render call.

A *feature field* attaches foundation-model features to a trained 3DGS scene. Whatever its method
(distillation baseline, FMGS hash grid, M3 memory attention), the layers above see one interface:

    field = load_field(scene_dir)                       # fmsplat.fields
    out = field.render(camera, spaces=["effnet"])       # FieldRender
    out.features["effnet"]                              # (D, h, w) in the extractor's own space
    field.gaussian_features("effnet")                   # (N, D) decoded per-Gaussian features
    field.space("effnet").extractor().encode_text([...])  # text in the same space

A field is committed as one unit under ``<scene>/fields/<method>/`` (fmsplat.workspace): its tensors,
its own Gaussians when the method changed the geometry (M3 trained jointly; they then replace the
scene's for that field), and ``field.json`` naming those files and the scene identity it was made from.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from fmsplat import __version__
from fmsplat.fields.configs import ConfigError, FieldError
from fmsplat.foundation.cache import CachedMaps, FeatureCache, extract_features
from fmsplat.foundation.registry import get_extractor, known_extractor, parse_options
from fmsplat.gaussians import GaussianModel
from fmsplat.render import rasterize
from fmsplat.scene import Camera
from fmsplat.workspace import Workspace

# ------------------------------------------------------------------------------------------ spaces
@dataclass(frozen=True)
class SpaceSpec:
    """One foundation-model feature space: how to build its extractor, and what it produces.

    `alias` is the short name users type (`effnet`, `effnet-mid`, `clip`); `name`/`options`/`pyramid`
    rebuild the extractor through the registry; `key` names its feature cache folder.
    """

    alias: str
    name: str
    options: tuple = ()  # sorted (key, value) pairs, hashable
    pyramid: bool = False
    key: str = ""
    dim: int = 0
    language_aligned: bool = False

    @classmethod
    def create(cls, name: str, alias: str | None = None, pyramid: bool = False, **options) -> "SpaceSpec":
        ex = _extractor(name, pyramid, tuple(sorted(options.items())))
        return cls(alias=alias or name, name=name, options=tuple(sorted(options.items())), pyramid=pyramid,
                   key=str(ex.key), dim=int(ex.dim), language_aligned=bool(getattr(ex, "language_aligned", False)))

    def extractor(self):
        """The extractor of this space (built once per process and shared)."""
        ex = _extractor(self.name, self.pyramid, tuple(self.options))
        if str(ex.key) != self.key or int(ex.dim) != self.dim:
            raise FieldError(f"space '{self.alias}': extractor {self.name} now has key {ex.key} / dim {ex.dim}, "
                             f"the field was trained for key {self.key} / dim {self.dim}")
        return ex

    def encode_text(self, texts) -> torch.Tensor:
        ex = self.extractor()
        if not self.language_aligned:
            raise FieldError(f"space '{self.alias}' ({self.name}) has no text encoder; query a language-aligned space")
        return ex.encode_text(list(texts)).float()

    def to_json(self) -> dict:
        d = asdict(self)
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SpaceSpec":
        """The space a field.json records; FieldError naming the entry when it is not one."""
        if not isinstance(d, dict):
            raise FieldError(f"a feature space must be an object, got {type(d).__name__}")
        d = dict(d)
        kinds = {"alias": str, "name": str, "key": str, "dim": int, "pyramid": bool, "language_aligned": bool}
        for key, kind in kinds.items():
            value = d.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise FieldError(f"feature space {d.get('alias')!r}: {key} must be a {kind.__name__}, got {value!r}")
        if d["dim"] < 1 or not known_extractor(d["name"]):
            raise FieldError(f"feature space {d['alias']!r}: not an extractor fmsplat knows ({d['name']!r}, "
                             f"dim {d['dim']})")
        if not isinstance(d.get("options") or {}, dict):
            raise FieldError(f"feature space {d['alias']!r}: options must be an object, got {d.get('options')!r}")
        d["options"] = tuple(sorted(dict(d.get("options") or {}).items()))
        return cls(**{k: d[k] for k in ("alias", "name", "options", *kinds) if k in d})


def parse_space(text: str, pyramid: bool = False) -> SpaceSpec:
    """'effnet', 'effnet-mid@stride=8', 'clip:openai/clip-vit-base-patch16@mode=maskclip' -> SpaceSpec.

    Options follow '@' as KEY=VALUE pairs (also separated by '@'; `pyramid=true` wraps the extractor in
    the FMGS pyramid, as `pyramid` does); the alias is the name before them,
    with a family's hub id shortened to the family ('clip:openai/...' -> 'clip')."""
    name, *pairs = text.strip().split("@")
    if not name:
        raise FieldError(f"empty model name in '{text}'")
    alias = name.split(":", 1)[0] if ":" in name else name
    options = parse_options(pairs)
    if "pyramid" in options:  # 'effnet@pyramid=true': the FMGS pyramid asked for in the name
        value = options.pop("pyramid")
        if not isinstance(value, bool):
            raise FieldError(f"'{text}': pyramid must be true or false, got {value!r}")
        pyramid = value
    return SpaceSpec.create(name, alias=alias, pyramid=pyramid, **options)


@functools.lru_cache(maxsize=16)
def _extractor(name: str, pyramid: bool, options: tuple):
    return get_extractor(name, pyramid=pyramid, **dict(options))


def param_key(alias: str) -> str:
    """A space's key in a ParameterDict/ModuleDict (no '.'; aliases may hold one)."""
    return alias.replace(".", "_")


def parse_spaces(models, default, method: str) -> list[SpaceSpec]:
    """Model names (or SpaceSpecs) -> spaces, `default` when none; two with one alias are an error."""
    spaces = [parse_space(m) if isinstance(m, str) else m for m in (models or default)]
    if len({s.alias for s in spaces}) != len(spaces):
        raise FieldError(f"{method}: two models share an alias in {[s.alias for s in spaces]}; give them distinct names")
    return spaces


# ------------------------------------------------------------------------------------------ teachers
def feature_cache(ws: Workspace, spec: SpaceSpec, progress: bool = True, ray: str | None = None,
                  workers: int | None = None) -> FeatureCache:
    """The feature cache of `spec` for every view of the scene's dataset, extracting what is missing (on a
    Ray cluster when `ray` is an address: fmsplat.parallel)."""
    return extract_features(ws.dataset, spec.extractor(), ws.root, progress=progress, ray=ray, workers=workers)


def teacher_maps(ws: Workspace, spaces: list[SpaceSpec], progress: bool = True) -> dict[str, list[torch.Tensor]]:
    """alias -> the cached teacher map (D, h, w) of every view, extracting what is missing."""
    out = {}
    for spec in spaces:
        cache = feature_cache(ws, spec, progress=progress)
        out[spec.alias] = [cache.get(ws.view_name(i)) for i in range(len(ws.dataset))]
    return out


def teacher_views(ws: Workspace, spaces: list[SpaceSpec], progress: bool = True, ray: str | None = None,
                  workers: int | None = None) -> dict[str, CachedMaps]:
    """As `teacher_maps`, but each view's map is read from the cache when indexed (CachedMaps): memory does
    not grow with the number of views, and the sequences can be sent to Ray workers."""
    out = {}
    for spec in spaces:
        cache = feature_cache(ws, spec, progress=progress, ray=ray, workers=workers)
        out[spec.alias] = CachedMaps(cache, [ws.view_name(i) for i in range(len(ws.dataset))])
    return out


# ------------------------------------------------------------------------------------------ render
def squared_norms(flat: torch.Tensor) -> torch.Tensor:
    """(D, P) -> (P,) squared column norms, in row blocks (no full-size temporary)."""
    sq = torch.zeros(flat.shape[1], dtype=flat.dtype, device=flat.device)
    for c in range(0, flat.shape[0], 64):
        part = flat[c:c + 64]
        sq += (part * part).sum(0)
    return sq


def resample(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, h, w): area average when shrinking (a teacher cell sees its whole receptive
    field, so the mean of the rendered pixels over it is what it should match), bilinear when growing."""
    grid = (int(grid[0]), int(grid[1]))
    if tuple(image.shape[-2:]) == grid:
        return image
    if grid[0] <= image.shape[-2] and grid[1] <= image.shape[-1]:
        return F.adaptive_avg_pool2d(image[None], grid)[0]
    return F.interpolate(image[None], size=grid, mode="bilinear", align_corners=False)[0]


@dataclass
class FieldRender:
    features: dict[str, torch.Tensor]  # alias -> (D, h, w)
    alpha: torch.Tensor  # (h, w)
    depth: torch.Tensor  # (h, w) expected depth (alpha-normalised)
    camera: Camera  # the camera at the rendered size


def camera_at(camera: Camera, size: tuple[int, int] | None) -> Camera:
    """`camera` resized to `size` = (width, height) (None: unchanged)."""
    if size is None or (int(size[0]), int(size[1])) == (camera.width, camera.height):
        return camera
    return camera.resized(*size)


def splat(gaussians, channels: torch.Tensor, camera: Camera, mask: torch.Tensor | None = None, background=None):
    """Render per-Gaussian `channels` (N, C) into (C, h, w): the one rasterizer call of the fields layer.

    `gaussians`: a GaussianModel (geometry as stored, detached) or its activated (means, quats, scales,
    opacities), used as given (gradients flow). `mask` (N,) keeps only some Gaussians (others are
    dropped, not made transparent). Returns the RenderResult with `image` permuted to (C, h, w)."""
    geometry = (t.detach() for t in gaussians.activated()) if isinstance(gaussians, GaussianModel) else gaussians
    means, quats, scales, opacities = geometry
    if mask is not None:
        means, quats, scales, opacities, channels = means[mask], quats[mask], scales[mask], opacities[mask], channels[mask]
    res = rasterize(means, quats, scales, opacities, channels, camera.viewmat_tensor(), camera.K_tensor(),
                    camera.width, camera.height, background=background)
    res.image = res.image.permute(2, 0, 1)
    return res


class FeatureField(torch.nn.Module):
    """Base class of every method. Subclasses set `method`, implement `splat_raw` and `decode_image`
    (what `render` needs), `gaussian_features`, and keep their hyper-parameters in `self.config` (a
    dataclass); `state_tensors`/`load_state_tensors` store the module's state unless overridden."""

    method: ClassVar[str] = ""

    def __init__(self, gaussians: GaussianModel, spaces: list[SpaceSpec], config) -> None:
        super().__init__()
        if not spaces:
            raise FieldError(f"{self.method}: a field needs at least one feature space")
        self.gaussians = gaussians
        self.spaces = {s.alias: s for s in spaces}
        self.config = config
        self.summary: dict = {}
        self.owns_geometry = False  # True when the method changed the Gaussians (saved beside the field)

    def space(self, alias: str) -> SpaceSpec:
        if alias not in self.spaces:
            raise FieldError(f"{self.method} field has no space '{alias}'; it has {sorted(self.spaces)}")
        return self.spaces[alias]

    @property
    def language_space(self) -> str:
        """The first language-aligned space (text queries go there by default)."""
        for alias, s in self.spaces.items():
            if s.language_aligned:
                return alias
        raise FieldError(f"{self.method} field has no language-aligned space (spaces: {sorted(self.spaces)})")

    def render(self, camera: Camera, spaces: list[str] | None = None, size: tuple[int, int] | None = None) -> FieldRender:
        """Render the features of `spaces` (default: all) seen from `camera`, at `size` = (w, h) if given."""
        spaces = [self.space(a).alias for a in (self.spaces if spaces is None else spaces)]
        cam = camera_at(camera, size)
        with torch.no_grad():
            res = self.splat_raw(cam)
            feats = {a: self.decode_image(a, res.image) for a in spaces}
        return FieldRender(features=feats, alpha=res.alpha, depth=res.expected_depth(), camera=cam)

    # -- to implement
    def splat_raw(self, camera: Camera):
        """The rasterizer's result for what the Gaussians carry (`image` (C, h, w)) at the camera's size."""
        raise NotImplementedError

    def decode_image(self, space: str, image: torch.Tensor) -> torch.Tensor:
        """(C, h, w) raw render -> (D, h, w) features of `space`."""
        raise NotImplementedError

    def gaussian_features(self, space: str) -> torch.Tensor:
        raise NotImplementedError

    def linear_head(self, space: str, image: torch.Tensor):
        """(chunks of the (P, K) inputs h, W (D, K), b (D,)) when the decoder of `space` ends in f = W·h + b
        (its output, or f/|f|), for the raw render `image`; None otherwise."""
        return None

    def render_text_dots(self, camera: Camera, space: str, texts: torch.Tensor,
                         size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, FieldRender]:
        """What a relevancy map needs of one view, and no more: the dot products (T, h, w) of the unit
        `texts` (T, D) with the rendered features of `space`, their squared norms (h, w), and the render
        (alpha, depth, camera; `features` left empty). With a linear last map (`linear_head`), texts·f =
        h̃·(W̃ᵀt) and |f|² = h̃ᵀ(W̃ᵀW̃)h̃ with h̃ = [h, 1], W̃ = [W | b]: products in K + 1 dimensions, never D."""
        self.space(space)
        cam = camera_at(camera, size)
        with torch.no_grad():
            res = self.splat_raw(cam)
            head = self.linear_head(space, res.image)
            if head is None:
                flat = self.decode_image(space, res.image).float().reshape(self.space(space).dim, -1)
                dots, sq = texts.float() @ flat, squared_norms(flat)
            else:
                chunks, w, b = head
                w_aug = torch.cat([w, b[:, None]], dim=1)  # (D, K + 1)
                proj, gram = texts.float() @ w_aug, (w_aug.T.double() @ w_aug.double()).float()
                h_aug = [torch.cat([h, h.new_ones(len(h), 1)], dim=1) for h in chunks]
                dots = torch.cat([h @ proj.T for h in h_aug]).T
                sq = torch.cat([((h @ gram) * h).sum(1) for h in h_aug])
        hw = (cam.height, cam.width)
        return dots.reshape(-1, *hw), sq.reshape(hw), FieldRender({}, res.alpha, res.expected_depth(), cam)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(tensors)

    @classmethod
    def from_saved(cls, gaussians: GaussianModel, spaces: list[SpaceSpec], config: dict, tensors: dict,
                   meta: dict) -> "FeatureField":
        """Rebuild a saved field (override when construction needs more than config and tensors)."""
        field_ = cls(gaussians, spaces, cls.config_class(**config))
        field_.load_state_tensors(tensors)
        field_.summary = meta.get("summary", {})
        return field_

    config_class: ClassVar[type] = type(None)
    # state tensors with one row per Gaussian (the rest, decoders, tables in world space, banks, are shared by
    # every Gaussian): what `subset` cuts
    per_gaussian: ClassVar[tuple[str, ...]] = ()

    def subset(self, keep) -> "FeatureField":
        """The same field on the Gaussians selected by the bool mask `keep` (N,): their per-Gaussian state cut
        with them, everything else as is, so that each kept Gaussian renders and answers as it did."""
        keep = torch.as_tensor(keep, dtype=torch.bool)
        n = len(self.gaussians)
        if keep.shape != (n,):
            raise FieldError(f"{self.method} field: a subset mask of shape {tuple(keep.shape)} for {n} Gaussians")
        if not keep.any():
            raise FieldError(f"{self.method} field: a subset must keep at least one Gaussian")
        tensors = self.state_tensors()
        for name in self.per_gaussian:
            if tensors[name].shape[0] != n:
                raise FieldError(f"{self.method} field: per-Gaussian tensor {name!r} has {tensors[name].shape[0]} rows "
                                 f"for {n} Gaussians")
            tensors[name] = tensors[name][keep].contiguous()
        config = asdict(self.config) if self.config is not None else {}
        field_ = type(self).from_saved(self.gaussians.detach().subset(keep), list(self.spaces.values()), config,
                                       tensors, {"summary": {**self.summary, "subset": {"of": n, "kept": int(keep.sum())}}})
        field_.eval()
        return field_

    # -- persistence
    def save(self, scene_dir) -> Path:
        """Commit the field as one unit into SCENE/fields/<method>/ (Workspace.commit): its tensors, its
        own Gaussians when it changed the geometry, and field.json naming them with what it was made from."""
        from safetensors.torch import save_file

        ws = scene_dir if isinstance(scene_dir, Workspace) else Workspace(scene_dir)
        made_from = ws.identity()
        if not self.owns_geometry and self.gaussians.fingerprint() != made_from["gaussians"]:
            raise FieldError(f"{ws.root}: the {self.method} field renders other Gaussians than {ws.gaussians_ply} "
                             f"(fingerprint {self.gaussians.fingerprint()}, the scene's is {made_from['gaussians']}); "
                             "fit it on the scene's Gaussians")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_tensors().items()}
        files = {"tensors": (".safetensors", lambda tmp: save_file(tensors, str(tmp)))}
        if self.owns_geometry:
            files["gaussians"] = (".ply", self.gaussians.save_ply)
        meta = {
            "method": self.method,
            "spaces": [s.to_json() for s in self.spaces.values()],
            "config": asdict(self.config) if self.config is not None else {},
            "summary": self.summary,
            "owns_geometry": self.owns_geometry,
            "num_gaussians": len(self.gaussians),
            "made_from": made_from,
            "fmsplat": __version__,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return ws.commit(ws.field_dir(self.method), files, meta).parent


def load_field_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types; name the file and re-raise
        raise FieldError(f"{path}: cannot read ({err})") from err
    for name, t in tensors.items():  # a NaN weight would answer every query with NaN, silently
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise FieldError(f"{path}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf); fit the field again")
    return tensors


__all__ = [
    "ConfigError", "FeatureField", "FieldError", "FieldRender", "SpaceSpec", "camera_at", "feature_cache", "load_field_tensors",
    "parse_space", "parse_spaces", "resample", "splat", "squared_norms", "teacher_maps", "teacher_views",
]
