"""fmsplat.reconstruct: 3DGS training (photometric loss, SH schedule, density control).

It sits after render/ in the pipeline because training renders; the Gaussian model itself
(gaussians/) stays free of any rendering import.
"""

from fmsplat.reconstruct.train import TrainConfig, evaluate_views, model_from_params, render_view, train_gaussians

__all__ = ["TrainConfig", "evaluate_views", "model_from_params", "render_view", "train_gaussians"]
