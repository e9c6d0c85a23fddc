"""fmsplat.fields: feature fields on Gaussian scenes — distillation baseline, FMGS, M3 — behind one interface.

    from fmsplat.fields import fit_field, load_field
    field = fit_field("scene/", "fmgs", models=["effnet", "effnet-mid"])   # trains, saves scene/fields/fmgs/
    field = load_field("scene/")                                          # the newest saved field
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fmsplat.fields.base import (
    ConfigError,
    FeatureField,
    FieldError,
    FieldRender,
    SceneBundle,
    SpaceSpec,
    camera_at,
    open_scene,
    parse_space,
    read_field_meta,
    splat,
)
from fmsplat.fields.configs import CONFIGS, config_class

# method name -> module; each module defines FIELD (a FeatureField subclass), Config (fields.configs), and
# fit(scene_dir, models, config=None, resume=False, progress=True, preset="paper", **overrides) -> FeatureField
METHODS = {m: f"fmsplat.fields.{m}" for m in CONFIGS}


def method_module(method: str):  # also one registered in METHODS alone (the tests' oracle); unknown: FieldError
    return importlib.import_module(METHODS[method if method in METHODS else config_class(method).method])


def fit_field(scene_dir, method: str, models=None, config=None, resume: bool = False, progress: bool = True,
              preset: str = "paper", **overrides) -> FeatureField:
    """Fit `method` on scene `scene_dir` into scene_dir/fields/<method>/, with `config`, else the named
    preset's settings (fields.configs.PRESETS), `overrides` applied."""
    return method_module(method).fit(scene_dir, models=models, config=config, resume=resume, progress=progress,
                                     preset=preset, **overrides)


def saved_methods(scene_dir) -> list[str]:
    """Methods with a finished field in scene_dir, newest first."""
    root = Path(scene_dir) / "fields"
    found = [p for p in root.glob("*/field.json")] if root.is_dir() else []
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.parent.name for p in found]


def load_field(scene_dir, method: str | None = None, bundle: SceneBundle | None = None) -> FeatureField:
    """Load the field of `method` (default: the newest saved one) with the Gaussians it renders."""
    from fmsplat.fields.base import FIELD_GAUSSIANS, load_field_tensors
    from fmsplat.gaussians import GaussianModel

    scene_dir = Path(scene_dir)
    if method is None:
        methods = saved_methods(scene_dir)
        if not methods:
            raise FieldError(f"{scene_dir}: no fitted field under fields/; run fmsplat fit {scene_dir} --method ...")
        method = methods[0]
    field_dir = scene_dir / "fields" / method
    meta = read_field_meta(field_dir)
    if meta.get("method") != method:
        raise FieldError(f"{field_dir / 'field.json'}: holds method {meta.get('method')!r}, expected {method!r}")
    module = method_module(method)
    if meta.get("owns_geometry"):
        gaussians = GaussianModel.load_ply(field_dir / FIELD_GAUSSIANS)
    elif bundle is not None:
        gaussians = bundle.gaussians
    else:
        ply = scene_dir / "gaussians.ply"
        if not ply.is_file():
            raise FieldError(f"{ply}: missing (the field {method} renders the scene's Gaussians)")
        gaussians = GaussianModel.load_ply(ply)
    if len(gaussians) != meta.get("num_gaussians", len(gaussians)):
        raise FieldError(f"{field_dir}: field was fitted on {meta['num_gaussians']} Gaussians, the scene has "
                         f"{len(gaussians)} (retrained since?); fit it again")
    spaces = [SpaceSpec.from_json(s) for s in meta["spaces"]]
    field_ = module.FIELD.from_saved(gaussians, spaces, meta.get("config", {}), load_field_tensors(field_dir), meta)
    field_.eval()
    return field_


__all__ = [
    "ConfigError", "FeatureField", "FieldError", "FieldRender", "METHODS", "SceneBundle", "SpaceSpec", "camera_at", "fit_field",
    "load_field", "method_module", "open_scene", "parse_space", "read_field_meta", "saved_methods", "splat",
]
