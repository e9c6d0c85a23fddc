"""fmsplat: foundation-model knowledge embedded in 3D Gaussian Splatting scenes.

Data flows one way: scene -> gaussians -> render -> foundation -> fields -> query -> eval.
"""

__version__ = "0.1.0"
