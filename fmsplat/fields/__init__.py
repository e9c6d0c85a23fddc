"""fmsplat.fields: feature fields on Gaussian scenes — distillation baseline, FMGS, M3 — behind one interface.

    from fmsplat.fields import fit_field, load_field
    field = fit_field("scene/", "fmgs", models=["effnet", "effnet-mid"])   # trains, saves scene/fields/fmgs/
    field = load_field("scene/")                                          # the newest saved field
"""

from __future__ import annotations

import importlib

from fmsplat.fields.base import (
    ConfigError,
    FeatureField,
    FieldError,
    FieldRender,
    SpaceSpec,
    camera_at,
    load_field_tensors,
    parse_space,
    splat,
)
from fmsplat.fields.configs import CONFIGS, config_class
from fmsplat.gaussians import GaussianModel
from fmsplat.workspace import FIELD_MANIFEST, Workspace

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
    """Methods with a committed field in scene_dir, newest first."""
    return Workspace(scene_dir).saved_methods()


def load_field(scene_dir, method: str | None = None, bundle: Workspace | None = None) -> FeatureField:
    """Load the field of `method` (default: the newest saved one) with the Gaussians it renders. `bundle`: the
    scene already opened (Workspace.open), else it is opened here. A field made from other Gaussians or
    another dataset than the scene's, or whose files differ from its manifest, is refused in one line."""
    ws = bundle if bundle is not None else Workspace.open(scene_dir)
    if method is None:
        methods = ws.saved_methods()
        if not methods:
            raise FieldError(f"{ws.root}: no fitted field under fields/; run fmsplat fit {ws.root} --method ...")
        method = methods[0]
    field_dir = ws.field_dir(method)
    meta, files = ws.read_manifest(field_dir)
    where = field_dir / FIELD_MANIFEST
    if meta.get("method") != method:
        raise FieldError(f"{where}: holds method {meta.get('method')!r}, expected {method!r}")
    ws.check_made_from(where, meta.get("made_from"), f"fit it (fmsplat fit {ws.root} --method {method})")
    module = method_module(method)
    if meta.get("owns_geometry"):
        if "gaussians" not in files:
            raise FieldError(f"{where}: says the field owns its Gaussians but names no Gaussians file")
        gaussians = GaussianModel.load_ply(files["gaussians"])
    else:
        gaussians = ws.gaussians
    if len(gaussians) != meta.get("num_gaussians", len(gaussians)):
        raise FieldError(f"{where}: field was fitted on {meta['num_gaussians']} Gaussians, these are "
                         f"{len(gaussians)}; fit it again")
    if "tensors" not in files:
        raise FieldError(f"{where}: names no tensors file")
    if not isinstance(meta.get("config"), dict):  # no silent defaults for settings the field was fitted with
        raise FieldError(f"{where}: 'config' must be the object of the settings the field was fitted with, got "
                         f"{type(meta.get('config')).__name__}; fit it again")
    if not isinstance(meta.get("spaces"), list) or not meta["spaces"]:
        raise FieldError(f"{where}: 'spaces' must be a non-empty list of feature spaces; fit it again")
    tensors = load_field_tensors(files["tensors"])
    try:
        spaces = [SpaceSpec.from_json(s) for s in meta["spaces"]]
        field_ = module.FIELD.from_saved(gaussians, spaces, meta["config"], tensors, meta)
        # what the field would save now must have the types it was read with (an integer table cast to
        # floats would load "fine" with every value truncated)
        now = field_.state_tensors()
        for name, t in tensors.items():
            if name in now and now[name].dtype != t.dtype:
                raise FieldError(f"tensor {name!r} is {t.dtype}, a {method} field stores {now[name].dtype}")
    except FieldError as err:
        if str(field_dir) in str(err):
            raise
        raise FieldError(f"{where}: {err}; fit it again") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:  # a manifest or tensors this
        # version cannot use
        raise FieldError(f"{where}: not a {method} field this version can load ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200] if str(err) else ''}); fit it again") from None
    field_.eval()
    return field_


__all__ = [
    "ConfigError", "FeatureField", "FieldError", "FieldRender", "METHODS", "SpaceSpec", "camera_at", "fit_field",
    "load_field", "method_module", "parse_space", "saved_methods", "splat",
]
