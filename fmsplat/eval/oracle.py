"""A feature field whose answers are known: per-Gaussian features painted from the 3D ground truth.

Each Gaussian whose centre lies in an object's 3D box (objects.json) carries the text embedding of that
object's label; every other Gaussian carries the embedding of a background word. Rendered and
queried like any other field, it shows what the protocols give when the features are right (an
upper bound for a scene: near 100% localisation) and, with `shuffle_seed`, when they carry no
information (the labels permuted among the Gaussians: near chance). The tests use it to check that
the query and evaluation layers can tell the two apart.

Features are stored as a class index per Gaussian and one embedding per class; a view renders the
one-hot classes (K channels) and decodes them with the embeddings, so rendering stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmsplat.fields.base import FeatureField, FieldError, SpaceSpec, splat
from fmsplat.gaussians import GaussianModel
from fmsplat.scene.labels import read_objects

BACKGROUND_WORD = "wall"


@dataclass
class OracleConfig:
    labels: list[str] = field(default_factory=list)  # class names; the last one is the background word
    shuffle_seed: int | None = None  # not None: the class of each Gaussian was permuted (no information)


class OracleField(FeatureField):
    method = "oracle"
    config_class = OracleConfig
    per_gaussian = ("classes",)

    def __init__(self, gaussians: GaussianModel, spaces: list[SpaceSpec], config: OracleConfig) -> None:
        super().__init__(gaussians, spaces, config)
        if len(self.spaces) != 1 or not spaces[0].language_aligned:
            raise FieldError("oracle field: exactly one language-aligned space")
        if not config.labels:
            raise FieldError("oracle field: no class labels")
        self.register_buffer("classes", torch.zeros(len(gaussians), dtype=torch.long))
        self.register_buffer("embeddings", torch.zeros(len(config.labels), spaces[0].dim))

    @classmethod
    def paint(cls, gaussians: GaussianModel, objects_json, space: SpaceSpec | None = None,
              background: str = BACKGROUND_WORD, shuffle_seed: int | None = None) -> "OracleField":
        """Paint `gaussians` from the 3D boxes of `objects_json`; `space` defaults to `effnet`."""
        objects, _ = read_objects(objects_json)
        if not objects:
            raise FieldError(f"{objects_json}: no objects to paint")
        space = space or SpaceSpec.create("effnet")
        labels = list(dict.fromkeys(o.label for o in objects)) + [background]
        field_ = cls(gaussians, [space], OracleConfig(labels=labels, shuffle_seed=shuffle_seed))
        means = gaussians.means.detach().double().cpu()
        classes = torch.full((len(gaussians),), len(labels) - 1, dtype=torch.long)
        for o in reversed(objects):  # the first box listed wins where boxes overlap
            inside = ((means >= torch.as_tensor(o.aabb_min)) & (means <= torch.as_tensor(o.aabb_max))).all(dim=1)
            classes[inside] = labels.index(o.label)
        if shuffle_seed is not None:
            gen = torch.Generator().manual_seed(int(shuffle_seed))
            classes = classes[torch.randperm(len(classes), generator=gen)]
        with torch.no_grad():
            field_.classes.copy_(classes)
            field_.embeddings.copy_(space.encode_text(labels).float())
        field_.summary = {"objects_json": str(Path(objects_json)), "shuffled": shuffle_seed is not None,
                          "counts": {lab: int((classes == k).sum()) for k, lab in enumerate(labels)}}
        field_.eval()
        return field_

    def splat_raw(self, camera):
        onehot = torch.nn.functional.one_hot(self.classes, len(self.config.labels)).float()
        return splat(self.gaussians, onehot, camera)

    def decode_image(self, space, image):
        return torch.einsum("kd,khw->dhw", self.embeddings, image)

    def gaussian_features(self, space: str) -> torch.Tensor:
        self.space(space)
        return self.embeddings[self.classes]


FIELD = OracleField

__all__ = ["BACKGROUND_WORD", "FIELD", "OracleConfig", "OracleField"]
