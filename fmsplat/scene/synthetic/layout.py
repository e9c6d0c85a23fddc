"""Scene description of the synthetic room: its configuration and presets, the room and object
boxes, and `build_scene`, which lays them out for a seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fmsplat.scene.synthetic.textures import (CALIBRATION_PHOTOS, PHOTOS, brick_texture, load_photo, photo_spec,
                                              plaster_texture, wood_texture)


@dataclass
class SceneConfig:
    width: int = 128
    height: int = 96
    n_views: int = 24
    objects: tuple[str, ...] = ("cat", "espresso cup", "camera tripod", "motorcycle")
    room_size: tuple[float, float, float] = (7.0, 7.0, 3.0)  # x, y extent (centred at 0), height
    focal_factor: float = 0.9  # fx = fy = focal_factor * width (about 58 degrees horizontal field of view)
    supersample: int = 2  # RGB rays per pixel side (anti-aliasing)
    texture_size: int = 192  # longest side of the photo textures, in texels
    n_points: int = 6000
    label_every: int = 8  # views with index % label_every == 0 get labels/ (the held-out views)
    min_label_fraction: float = 0.01  # an object is labelled in a view when it covers this image fraction
    min_visible_share: float = 0.3  # ... and this share of its whole silhouette (not cut off by frame/occluders)
    # Every face of an object shows different pixels: a cube's four faces a quadrant of its photo each,
    # a panel's back the photo mirrored. Off for the labelled scenes; on for videos, where four
    # identical faces are a repeated structure that misleads structure from motion (the same cat
    # matched on two faces registers a view 90 degrees off).
    distinct_faces: bool = False

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        unknown = [o for o in self.objects if o not in PHOTOS and o not in CALIBRATION_PHOTOS]
        if unknown:
            raise ValueError(f"unknown object(s) {unknown}; available: {sorted(PHOTOS)}, calibration pool "
                             f"(bench/presence_family.py): {sorted(CALIBRATION_PHOTOS)}")
        if len(set(self.objects)) != len(self.objects):
            raise ValueError(f"objects must be distinct, got {list(self.objects)}")
        if self.width < 8 or self.height < 8 or self.n_views < 1 or self.supersample < 1:
            raise ValueError(f"invalid scene size: {self.width}x{self.height}, {self.n_views} views")


PRESETS: dict[str, dict] = {
    "tiny": dict(width=128, height=96, n_views=24, objects=("cat", "espresso cup", "camera tripod", "motorcycle"),
                 room_size=(7.0, 7.0, 3.0), supersample=2, texture_size=192, n_points=6000),
    "bench": dict(width=320, height=240, n_views=72,
                  objects=("cat", "espresso cup", "rocket", "motorcycle", "astronaut", "flower", "pagoda", "camera tripod"),
                  room_size=(9.0, 9.0, 3.2), supersample=2, texture_size=384, n_points=30000),
}


def preset_config(preset: str, **overrides) -> SceneConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {sorted(PRESETS)}")
    params = {**PRESETS[preset], **overrides}
    if "objects" in params:
        params["objects"] = tuple(params["objects"])
    return SceneConfig(**params)


@dataclass
class Box:
    instance_id: int
    label: str
    synonyms: tuple[str, ...]
    source: str
    kind: str
    facing_axis: int  # panels: 0 (photo faces +-x) or 1 (+-y); cubes: -1
    lo: np.ndarray
    hi: np.ndarray
    photo: np.ndarray  # (h, w, 3) float32 in [0, 1]
    border_rgb: np.ndarray  # frame around the photo, the panel edges and the top


@dataclass
class Room:
    lo: np.ndarray
    hi: np.ndarray
    floor_tex: np.ndarray  # wood planks, (n, n, 3), spans floor_tile metres
    floor_tile: float
    brick_tex: np.ndarray  # spans brick_tile metres
    brick_tile: float
    plaster_tex: np.ndarray
    plaster_tile: float


@dataclass
class Scene:
    room: Room
    boxes: list[Box]
    light_dir: np.ndarray  # unit vector towards the key light (casts shadows)
    fill_dir: np.ndarray
    config: SceneConfig = field(default_factory=SceneConfig)


def build_scene(config: SceneConfig, seed: int) -> Scene:
    """Room, textures and object layout for a seed (deterministic)."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = config.room_size
    room = Room(
        lo=np.array([-sx / 2, -sy / 2, 0.0]),
        hi=np.array([sx / 2, sy / 2, sz]),
        floor_tex=wood_texture(rng),
        floor_tile=1.6,
        brick_tex=brick_texture(rng),
        brick_tile=1.2,
        plaster_tex=plaster_texture(rng),
        plaster_tile=1.5,
    )
    boxes: list[Box] = []
    # Objects stay away from the walls so that cameras fit around them.
    margin = 1.3
    for inst, name in enumerate(config.objects, start=1):
        spec = photo_spec(name)
        photo = load_photo(spec, config.texture_size)
        aspect = photo.shape[1] / photo.shape[0]
        height = spec.height * rng.uniform(0.9, 1.1)
        width = height * aspect
        if spec.kind == "cube":
            extent = np.array([width, width, height])
            facing = -1
        else:
            facing = int(rng.integers(0, 2))
            extent = np.array([width, width, height])
            extent[facing] = 0.12
        for _attempt in range(500):
            centre = rng.uniform(room.lo[:2] + margin + extent[:2] / 2, room.hi[:2] - margin - extent[:2] / 2)
            lo = np.array([*(centre - extent[:2] / 2), 0.0])
            hi = np.array([*(centre + extent[:2] / 2), extent[2]])
            # Keep a walkable gap between objects (cameras go between them).
            if all(np.any((lo[:2] > b.hi[:2] + 0.7) | (hi[:2] < b.lo[:2] - 0.7)) for b in boxes):
                break
        else:
            raise RuntimeError(
                f"could not place {name!r} in a {sx}x{sy} m room with {len(config.objects)} objects; "
                "use a larger room_size or fewer objects"
            )
        # Frame, edges and top in a dark neutral tone: they must not out-shout the photo.
        border = np.array(rng.uniform(0.12, 0.3) * rng.uniform(0.85, 1.15, 3), dtype=np.float32)
        boxes.append(Box(inst, spec.label, spec.synonyms, spec.source, spec.kind, facing, lo, hi, photo, border))
    light = np.array([0.45, 0.3, 0.85])
    fill = np.array([-0.6, -0.5, 0.4])
    return Scene(room, boxes, light / np.linalg.norm(light), fill / np.linalg.norm(fill), config)
