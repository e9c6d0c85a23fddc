"""fmsplat.scene: cameras and dataset readers (transforms.json, COLMAP)."""

from fmsplat.scene.cameras import Camera
from fmsplat.scene.dataset import SceneDataset, load_dataset
from fmsplat.scene.errors import DatasetError

__all__ = ["Camera", "DatasetError", "SceneDataset", "load_dataset"]
