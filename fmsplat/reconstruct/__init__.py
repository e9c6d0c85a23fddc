"""fmsplat.reconstruct: 3DGS training (photometric loss, SH schedule, initialisation, density control
by the 3DGS or MCMC strategy) and renders for people (comparison panels, camera paths, videos).

It sits after render/ in the pipeline because training renders; the Gaussian model itself
(gaussians/) stays free of any rendering import.
"""

from fmsplat.reconstruct.init import INITS, frustum_points, initial_gaussians
from fmsplat.reconstruct.mcmc import MCMCConfig, MCMCStrategy
from fmsplat.reconstruct.train import TrainConfig, evaluate_views, train_gaussians

__all__ = ["INITS", "MCMCConfig", "MCMCStrategy", "TrainConfig", "evaluate_views", "frustum_points",
           "initial_gaussians", "train_gaussians"]
