"""fmsplat.reconstruct: 3DGS training (photometric loss, SH schedule, initialisation, density control
by the 3DGS or MCMC strategy) and renders for people (comparison panels, camera paths, videos).

It sits after render/ in the pipeline because training renders; the Gaussian model itself
(gaussians/) stays free of any rendering import. The settings (reconstruct.configs) import nothing
heavy; the rest loads on first use, so that reading a config does not load torch and numba.
"""

import importlib

from fmsplat.reconstruct.configs import INITS, MCMCConfig, TrainConfig

_LAZY = {"MCMCStrategy": "mcmc", "evaluate_views": "train", "frustum_points": "init",
         "initial_gaussians": "init", "train_gaussians": "train"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"fmsplat.reconstruct.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fmsplat.reconstruct' has no attribute {name!r}")


__all__ = ["INITS", "MCMCConfig", "MCMCStrategy", "TrainConfig", "evaluate_views", "frustum_points",
           "initial_gaussians", "train_gaussians"]
