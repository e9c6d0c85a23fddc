"""Labelled synthetic benchmark scenes: a room with photo-covered objects, rendered by exact ray casting.

The published open-vocabulary benchmarks cannot be downloaded here, so the project builds its own
scenes with exact ground truth. A scene is a closed room (wood floor, brick and plaster walls,
ceiling) holding axis-aligned boxes ("cubes" with the photo on their four sides, "panels" with it
on their two large faces) that stand on the floor. The photos are real, bundled with installed
packages (scikit-image, and scikit-learn for two of the benchmark preset's), and cropped to the
thing they show, so each object has a clear name.

Views are rendered by casting rays against the boxes in numpy, independently of the project's
Gaussian rasterizer: RGB (diffuse shading with a shadow-casting light, supersampled), per-pixel
instance id and z-depth at pixel centres. World: z up, floor at z = 0, metres.

Output (a standard transforms.json dataset)::

    transforms.json          OpenGL camera-to-world matrices, fl_x/fl_y/cx/cy/w/h, ply_file_path
    images/0000.png ...      RGB
    depth/0000.png           uint16 z-depth in millimetres (transforms.json: depth_unit_scale_factor)
    instances/0000.png       uint16 instance id (0 = room)
    labels/0000.json         LERF-OVS labels of the evaluation views (index % label_every == 0)
    objects.json             labels, synonyms, instance ids, 3D boxes
    points3d.ply             random surface samples with colours (3DGS initialisation)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numba
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.transform import resize

from fmsplat.atomic import write_json, write_with
from fmsplat.scene.cameras import GL_TO_CV, Camera
from fmsplat.scene.labels import SceneObjectInfo, labels_from_instances, write_objects, write_view_labels

GENERATOR_VERSION = 1
UP = np.array([0.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# photos


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as e:
            raise ImportError(
                f"the photo {filename!r} ships with scikit-learn, which is not installed: "
                "`pip install scikit-learn` or choose objects from scikit-image's photos"
            ) from e
        return load_sample_image(filename)

    return load


@dataclass(frozen=True)
class PhotoSpec:
    label: str
    synonyms: tuple[str, ...]
    source: str  # provenance, written to objects.json
    load: Callable[[], np.ndarray]
    crop: tuple[int, int, int, int]  # rows r0:r1, cols c0:c1 in the original photo
    kind: str  # "cube" (photo on 4 sides) or "panel" (photo on the 2 large faces)
    height: float  # nominal object height in metres


# Crops keep the thing the label names and little else, so that the label is the right answer.
PHOTOS: dict[str, PhotoSpec] = {
    p.label: p
    for p in [
        PhotoSpec("cat", ("kitten", "tabby cat", "Egyptian cat"), "skimage.data.chelsea", _skimage("chelsea"),
                  (0, 300, 40, 420), "cube", 0.85),
        PhotoSpec("espresso cup", ("coffee cup", "espresso", "cup of coffee"), "skimage.data.coffee", _skimage("coffee"),
                  (0, 400, 90, 570), "cube", 0.85),
        PhotoSpec("rocket", ("missile", "space rocket", "launch vehicle"), "skimage.data.rocket", _skimage("rocket"),
                  (30, 427, 250, 420), "cube", 1.5),
        PhotoSpec("motorcycle", ("motorbike", "moped", "motor scooter"), "skimage.data.stereo_motorcycle",
                  _skimage("motorcycle"), (80, 480, 80, 700), "panel", 1.0),
        PhotoSpec("astronaut", ("spacesuit", "space shuttle", "person in a space suit"), "skimage.data.astronaut",
                  _skimage("astronaut"), (0, 512, 0, 512), "panel", 1.2),
        PhotoSpec("flower", ("dahlia", "daisy", "blossom"), "sklearn.datasets.load_sample_image('flower.jpg')",
                  _sklearn("flower.jpg"), (50, 400, 140, 480), "cube", 0.9),
        PhotoSpec("pagoda", ("temple", "palace", "chinese tower"), "sklearn.datasets.load_sample_image('china.jpg')",
                  _sklearn("china.jpg"), (20, 400, 60, 360), "panel", 1.4),
        PhotoSpec("camera tripod", ("tripod", "cameraman", "photographer"), "skimage.data.camera",
                  _skimage("camera"), (0, 512, 0, 512), "panel", 1.2),
    ]
}


# ---------------------------------------------------------------------------------------------
# presets


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
        unknown = [o for o in self.objects if o not in PHOTOS]
        if unknown:
            raise ValueError(f"unknown object(s) {unknown}; available: {sorted(PHOTOS)}")
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


# ---------------------------------------------------------------------------------------------
# scene description


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


def _wood_texture(rng: np.random.Generator, n: int = 256, planks: int = 8) -> np.ndarray:
    """Wood planks running along x: per-plank tone, grain from smoothed noise, dark joints."""
    y, x = np.mgrid[0:n, 0:n] / n
    plank = np.minimum((y * planks).astype(int), planks - 1)
    tone = rng.uniform(0.8, 1.15, planks)[plank]
    noise = gaussian_filter(rng.standard_normal((n, n)), sigma=(1.0, 12.0), mode="wrap")
    noise /= noise.std() + 1e-9
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (y * planks * 6.0 + 0.6 * noise + rng.uniform(0, 1, planks)[plank]))
    base = np.array([0.62, 0.42, 0.25])
    tex = base * (tone * (0.85 + 0.15 * grain))[..., None]
    # Dark gaps between planks and at staggered plank ends.
    gap_y = (y * planks) % 1.0 < 0.04
    offsets = rng.uniform(0, 1, planks)[plank]
    gap_x = ((x + offsets) * 2.0) % 1.0 < 0.008
    tex[gap_y | gap_x] *= 0.45
    return np.clip(tex, 0, 1).astype(np.float32)


def _brick_texture(rng: np.random.Generator, n: int = 256, rows: int = 16, per_row: int = 4) -> np.ndarray:
    """Running-bond brick wall: per-brick tone, light mortar joints, half-brick offset per row."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    row = (y * rows / n).astype(int)
    shifted = x + (row % 2) * (n / per_row / 2)
    col = (shifted * per_row / n).astype(int) % per_row
    tone = rng.uniform(0.8, 1.15, (rows, per_row))[row, col]
    noise = gaussian_filter(rng.standard_normal((n, n)), sigma=1.5, mode="wrap")
    brick = np.array([0.62, 0.3, 0.22]) * (tone * (1.0 + 0.06 * noise / (noise.std() + 1e-9)))[..., None]
    joint = ((y % (n / rows)) < 2) | ((shifted % (n / per_row)) < 2)
    brick[joint] = np.array([0.72, 0.7, 0.66])
    return np.clip(brick, 0, 1).astype(np.float32)


def _plaster_texture(rng: np.random.Generator, n: int = 128) -> np.ndarray:
    noise = gaussian_filter(rng.standard_normal((n, n)), sigma=6.0, mode="wrap")
    noise /= noise.std() + 1e-9
    base = np.array([0.82, 0.80, 0.72], dtype=np.float32)
    return np.clip(base * (1.0 + 0.02 * noise[..., None]), 0, 1).astype(np.float32)


def _load_photo(spec: PhotoSpec, texture_size: int) -> np.ndarray:
    img = np.asarray(spec.load())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    r0, r1, c0, c1 = spec.crop
    if r1 > img.shape[0] or c1 > img.shape[1]:
        raise ValueError(f"crop {spec.crop} of {spec.source} exceeds its size {img.shape[:2]}")
    img = img[r0:r1, c0:c1].astype(np.float32) / 255.0
    scale = texture_size / max(img.shape[:2])
    shape = (max(2, round(img.shape[0] * scale)), max(2, round(img.shape[1] * scale)))
    return resize(img, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)


def build_scene(config: SceneConfig, seed: int) -> Scene:
    """Room, textures and object layout for a seed (deterministic)."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = config.room_size
    room = Room(
        lo=np.array([-sx / 2, -sy / 2, 0.0]),
        hi=np.array([sx / 2, sy / 2, sz]),
        floor_tex=_wood_texture(rng),
        floor_tile=1.6,
        brick_tex=_brick_texture(rng),
        brick_tile=1.2,
        plaster_tex=_plaster_texture(rng),
        plaster_tile=1.5,
    )
    boxes: list[Box] = []
    # Objects stay away from the walls so that cameras fit around them.
    margin = 1.3
    for inst, name in enumerate(config.objects, start=1):
        spec = PHOTOS[name]
        photo = _load_photo(spec, config.texture_size)
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


# ---------------------------------------------------------------------------------------------
# ray casting


@numba.njit(cache=True)
def _cast_kernel(origins, dirs, lo, hi, ids, room_lo, room_hi, t_out, id_out, axis_out):  # pragma: no cover - jit
    """Per ray: exit point of the room box, replaced by the entry point of the nearest object box
    in front of the origin (slab test; rays that start inside a box do not hit it)."""
    for r in range(origins.shape[0]):
        t_best = np.inf
        axis_best = 0
        for a in range(3):
            d = dirs[r, a]
            if d > 0.0:
                t = (room_hi[a] - origins[r, a]) / d
            elif d < 0.0:
                t = (room_lo[a] - origins[r, a]) / d
            else:
                continue
            if t < t_best:
                t_best = t
                axis_best = a
        inst = 0
        for m in range(lo.shape[0]):
            t_near = -np.inf
            t_far = np.inf
            axis_near = 0
            miss = False
            for a in range(3):
                d = dirs[r, a]
                o = origins[r, a]
                if d == 0.0:
                    if o < lo[m, a] or o > hi[m, a]:
                        miss = True
                        break
                    continue
                t0 = (lo[m, a] - o) / d
                t1 = (hi[m, a] - o) / d
                if t0 > t1:
                    t0, t1 = t1, t0
                if t0 > t_near:
                    t_near = t0
                    axis_near = a
                if t1 < t_far:
                    t_far = t1
            if not miss and t_near <= t_far and t_near > 1e-9 and t_near < t_best:
                t_best = t_near
                axis_best = axis_near
                inst = ids[m]
        t_out[r] = t_best
        id_out[r] = inst
        axis_out[r] = axis_best


@numba.njit(cache=True)
def _blocked_kernel(origins, direction, lo, hi, out):  # pragma: no cover - jit
    """Per ray: does any box intersect the ray at positive distance (shadow test)?"""
    for r in range(origins.shape[0]):
        hit = False
        for m in range(lo.shape[0]):
            t_near = -np.inf
            t_far = np.inf
            miss = False
            for a in range(3):
                d = direction[a]
                o = origins[r, a]
                if d == 0.0:
                    if o < lo[m, a] or o > hi[m, a]:
                        miss = True
                        break
                    continue
                t0 = (lo[m, a] - o) / d
                t1 = (hi[m, a] - o) / d
                if t0 > t1:
                    t0, t1 = t1, t0
                t_near = max(t_near, t0)
                t_far = min(t_far, t1)
            if not miss and t_near <= t_far and t_far > 1e-6:
                hit = True
                break
        out[r] = hit


def _box_arrays(boxes: list[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not boxes:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=np.int32)
    return (
        np.ascontiguousarray(np.stack([b.lo for b in boxes]), dtype=np.float64),
        np.ascontiguousarray(np.stack([b.hi for b in boxes]), dtype=np.float64),
        np.array([b.instance_id for b in boxes], dtype=np.int32),
    )


def intersect(scene: Scene, origins: np.ndarray, dirs: np.ndarray, boxes: list[Box] | None = None):
    """Nearest hit of rays (inside the room) with the objects, or else the room's inner walls.

    Returns t (N,) (ray parameter, so the hit is origins + t * dirs), instance id (N,) (0 = room),
    hit axis (N,) and outward surface normal (N, 3).
    """
    boxes = scene.boxes if boxes is None else boxes
    lo, hi, ids = _box_arrays(boxes)
    origins = np.ascontiguousarray(origins, dtype=np.float64)
    dirs = np.ascontiguousarray(dirs, dtype=np.float64)
    n = len(origins)
    t = np.empty(n)
    instance = np.empty(n, dtype=np.int32)
    axis = np.empty(n, dtype=np.int64)
    _cast_kernel(origins, dirs, lo, hi, ids, scene.room.lo, scene.room.hi, t, instance, axis)
    # Both an entered object face and an exited room wall face the ray: normal = -sign(d) on the axis.
    normal = np.zeros_like(dirs)
    rows = np.arange(n)
    normal[rows, axis] = -np.sign(dirs[rows, axis])
    return t, instance, axis, normal


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray, wrap: bool) -> np.ndarray:
    """Bilinear lookup; u, v in texture units [0, 1] (u across columns, v down rows)."""
    h, w = tex.shape[:2]
    x = u * w - 0.5
    y = v * h - 0.5
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    if wrap:
        xs = (x0 % w, (x0 + 1) % w)
        ys = (y0 % h, (y0 + 1) % h)
    else:
        xs = (np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1))
        ys = (np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1))
    top = tex[ys[0], xs[0]] * (1 - fx) + tex[ys[0], xs[1]] * fx
    bottom = tex[ys[1], xs[0]] * (1 - fx) + tex[ys[1], xs[1]] * fx
    return top * (1 - fy) + bottom * fy


def albedo(scene: Scene, points: np.ndarray, instance: np.ndarray, axis: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Surface colour (no lighting) at hit points."""
    room = scene.room
    out = np.zeros((len(points), 3), dtype=np.float32)
    on_room = instance == 0
    # Floor: wood planks; ceiling: plain; walls: brick on the -x and +y walls, plaster elsewhere,
    # with a dark skirting board so that the wall-floor edge is easy to see.
    floor = on_room & (axis == 2) & (normal[:, 2] > 0)
    ceiling = on_room & (axis == 2) & (normal[:, 2] < 0)
    out[floor] = _sample(room.floor_tex, points[floor, 0] / room.floor_tile, points[floor, 1] / room.floor_tile, True)
    out[ceiling] = np.array([0.9, 0.9, 0.88], dtype=np.float32)
    wall = on_room & (axis < 2)
    along = np.where(axis == 0, points[:, 1], points[:, 0])
    brick = wall & (((axis == 0) & (normal[:, 0] > 0)) | ((axis == 1) & (normal[:, 1] < 0)))
    plaster = wall & ~brick
    v_wall = (room.hi[2] - points[:, 2])
    out[brick] = _sample(room.brick_tex, along[brick] / room.brick_tile, v_wall[brick] / room.brick_tile, True)
    out[plaster] = _sample(room.plaster_tex, along[plaster] / room.plaster_tile, v_wall[plaster] / room.plaster_tile, True)
    skirting = wall & (points[:, 2] < 0.12)
    out[skirting] = np.array([0.25, 0.2, 0.17], dtype=np.float32)

    for b in scene.boxes:
        sel = np.flatnonzero(instance == b.instance_id)
        if sel.size == 0:
            continue
        p, ax, n = points[sel], axis[sel], normal[sel]
        colour = np.broadcast_to(b.border_rgb, (sel.size, 3)).copy()
        photo_face = (ax < 2) if b.kind == "cube" else (ax == b.facing_axis)
        # Horizontal photo coordinate runs to the viewer's right for someone facing the face,
        # so the photo is never mirrored: right = (-n) x up.
        size = b.hi - b.lo
        u = np.zeros(sel.size)
        x_face = ax == 0
        y_face = ax == 1
        u[x_face] = np.where(n[x_face, 0] > 0, p[x_face, 1] - b.lo[1], b.hi[1] - p[x_face, 1]) / size[1]
        u[y_face] = np.where(n[y_face, 1] > 0, b.hi[0] - p[y_face, 0], p[y_face, 0] - b.lo[0]) / size[0]
        v = (b.hi[2] - p[:, 2]) / size[2]
        # A thin frame around the photo separates object from room in the image.
        frame = 0.035
        inside = photo_face & (u > frame) & (u < 1 - frame) & (v > frame) & (v < 1 - frame)
        uu = (u[inside] - frame) / (1 - 2 * frame)
        vv = (v[inside] - frame) / (1 - 2 * frame)
        if scene.config.distinct_faces:
            nf = n[inside]
            if b.kind == "cube":  # face 0..3 by axis and side: its own quadrant of the photo
                face = 2 * ax[inside] + (nf[np.arange(len(nf)), ax[inside]] > 0)
                uu, vv = 0.5 * uu + 0.5 * (face % 2), 0.5 * vv + 0.5 * (face // 2)
            else:  # the back of a panel mirrored: SIFT descriptors are not mirror-invariant
                back = nf[:, b.facing_axis] < 0
                uu = np.where(back, 1.0 - uu, uu)
        colour[inside] = _sample(b.photo, uu, vv, False)
        out[sel] = colour
    return out


def shade(scene: Scene, points: np.ndarray, normal: np.ndarray, base: np.ndarray) -> np.ndarray:
    """View-independent diffuse lighting: ambient + key light (with cast shadows) + fill light."""
    n_dot_l = np.clip(normal @ scene.light_dir, 0.0, None)
    lit = n_dot_l > 0
    if lit.any() and scene.boxes:
        # Shadow rays from just off the surface towards the key light (it sits outside the room,
        # so only the objects can block it).
        origins = np.ascontiguousarray(points[lit] + 1e-4 * normal[lit])
        lo, hi, _ = _box_arrays(scene.boxes)
        blocked = np.empty(len(origins), dtype=np.bool_)
        _blocked_kernel(origins, np.ascontiguousarray(scene.light_dir, dtype=np.float64), lo, hi, blocked)
        n_dot_l[np.flatnonzero(lit)[blocked]] = 0.0
    fill = np.clip(normal @ scene.fill_dir, 0.0, None)
    light = 0.6 + 0.4 * n_dot_l + 0.15 * fill
    return np.clip(base * light[:, None], 0.0, 1.0)


def camera_rays(camera: Camera, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays through pixel positions (col + ox, row + oy) for each offset (S, 2).

    Directions are scaled so that their camera-frame z is 1: the ray parameter is the z-depth.
    Returns origins (S*H*W, 3) and directions, ordered (sample, row, col).
    """
    rows, cols = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    px = cols[None] + offsets[:, 0, None, None]
    py = rows[None] + offsets[:, 1, None, None]
    K = camera.K
    x = (px - K[0, 2]) / K[0, 0]
    y = (py - K[1, 2]) / K[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 3)
    c2w = camera.c2w
    dirs = d_cam @ c2w[:3, :3].T
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
    return origins, dirs


def render_view(scene: Scene, camera: Camera, supersample: int = 1):
    """Exact ray-cast render: rgb (H, W, 3) float32 in [0, 1], instance (H, W) int32, depth (H, W) float32.

    Instance ids and depth are those of the ray through each pixel centre (col + 0.5, row + 0.5);
    RGB averages a supersample x supersample grid of rays inside the pixel.
    """
    h, w = camera.height, camera.width
    centre = np.array([[0.5, 0.5]])
    o, d = camera_rays(camera, centre)
    t, instance, _, _ = intersect(scene, o, d)
    s = supersample
    grid = (np.arange(s) + 0.5) / s
    offsets = np.stack(np.meshgrid(grid, grid, indexing="xy"), axis=-1).reshape(-1, 2)
    rgb = np.zeros((h * w, 3), dtype=np.float64)
    # Chunk the samples to bound memory (rays x boxes x 3 arrays).
    for k in range(0, len(offsets), 4):
        o_s, d_s = camera_rays(camera, offsets[k : k + 4])
        ts, inst_s, ax_s, n_s = intersect(scene, o_s, d_s)
        pts = o_s + ts[:, None] * d_s
        col = shade(scene, pts, n_s, albedo(scene, pts, inst_s, ax_s, n_s))
        rgb += col.reshape(-1, h * w, 3).sum(axis=0)
    rgb /= len(offsets)
    return (
        rgb.reshape(h, w, 3).astype(np.float32),
        instance.reshape(h, w).astype(np.int32),
        t.reshape(h, w).astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------
# cameras


def look_at_camera(eye: np.ndarray, target: np.ndarray, K: np.ndarray, width: int, height: int, name: str = "") -> Camera:
    """OpenCV camera at `eye` looking at `target` with world +z up (image rows run downwards)."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, UP)
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("look_at_camera: viewing direction is parallel to the up axis")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return Camera(K=K, viewmat=np.linalg.inv(c2w), width=width, height=height, name=name)


def intrinsics(config: SceneConfig) -> np.ndarray:
    f = config.focal_factor * config.width
    return np.array([[f, 0.0, config.width / 2], [0.0, f, config.height / 2], [0.0, 0.0, 1.0]])


def _coverage(scene: Scene, camera: Camera, boxes: list[Box]) -> tuple[np.ndarray, np.ndarray, float]:
    """On a coarse render: per box (fraction of the frame it covers, fraction of its unoccluded
    footprint that is visible), and the frame fraction covered by all the other objects."""
    small = camera.scaled(0.25)
    o, d = camera_rays(small, np.array([[0.5, 0.5]]))
    _, inst, _, _ = intersect(scene, o, d)
    frame, unoccluded = [], []
    for box in boxes:
        _, alone, _, _ = intersect(scene, o, d, boxes=[box])
        visible = np.count_nonzero(inst == box.instance_id)
        footprint = np.count_nonzero(alone == box.instance_id)
        frame.append(visible / inst.size)
        unoccluded.append(visible / footprint if footprint else 0.0)
    others = (inst > 0) & ~np.isin(inst, [b.instance_id for b in boxes])
    return np.array(frame), np.array(unoccluded), float(others.mean())


def _silhouette_pixels(scene: Scene, camera: Camera, box: Box) -> float:
    """Pixels the box alone would cover in an unbounded image of this camera (counted on a
    half-resolution image three times as wide and high, centred on the real one)."""
    K = camera.K.copy()
    K[0, 2] += camera.width
    K[1, 2] += camera.height
    wide = replace(camera, K=K, width=3 * camera.width, height=3 * camera.height).scaled(0.5)
    o, d = camera_rays(wide, np.array([[0.5, 0.5]]))
    _, alone, _, _ = intersect(scene, o, d, boxes=[box])
    return 4.0 * np.count_nonzero(alone == box.instance_id)


def sample_cameras(scene: Scene, seed: int) -> list[Camera]:
    """Cameras inside the room at varied heights, each aimed at one object (close views) or at a
    group of objects (overview views, always used for the labelled views)."""
    cfg = scene.config
    rng = np.random.default_rng([seed, 1])
    K = intrinsics(cfg)
    vfov = 2 * np.arctan(cfg.height / 2 / K[1, 1])
    hfov = 2 * np.arctan(cfg.width / 2 / K[0, 0])
    room = scene.room
    centres = np.stack([0.5 * (b.lo + b.hi) for b in scene.boxes])
    # Labelled views frame pairs of objects drawn in rounds (each round a shuffle of all the
    # objects, cut into pairs), so that every object is framed in some of them.
    n_obj = len(scene.boxes)
    pairs: list[tuple[int, ...]] = []
    while len(pairs) < cfg.n_views // cfg.label_every + 2 * n_obj:
        order = [int(j) for j in rng.permutation(n_obj)]
        if n_obj == 1:
            pairs.append((order[0],))
            continue
        if n_obj % 2:
            order.append(next(j for j in order if j != order[-1]))
        pairs.extend(zip(order[0::2], order[1::2]))
    cameras = []
    for i in range(cfg.n_views):
        labelled = i % cfg.label_every == 0
        overview = labelled or rng.uniform() < 0.25
        for attempt in range(400):
            if overview:
                # Two objects framed together: aim between them, back off until both fit.
                if labelled:
                    # Move on to the next pair when one cannot be framed.
                    pick = np.array(pairs[(i // cfg.label_every + attempt // 80) % len(pairs)])
                else:
                    pick = rng.choice(len(scene.boxes), size=min(2, len(scene.boxes)), replace=False)
                target = centres[pick].mean(axis=0)
                target[2] = rng.uniform(0.35, 0.7)
                corners = np.concatenate([[scene.boxes[j].lo[:2], scene.boxes[j].hi[:2]] for j in pick])
                spread = np.linalg.norm(corners - target[:2], axis=1).max()
                distance = spread / np.tan(rng.uniform(0.85, 1.0) * hfov / 2)
                azimuth = rng.uniform(0, 2 * np.pi)
            else:
                # Objects take turns; one that cannot be seen clearly (hemmed in by others or a
                # wall) hands its view to the next.
                box = scene.boxes[(i + attempt // 100) % len(scene.boxes)]
                centre = 0.5 * (box.lo + box.hi)
                radius = 0.5 * np.linalg.norm(box.hi - box.lo)
                # The object's bounding sphere subtends 50-100 % of the vertical field of view.
                distance = radius / np.tan(rng.uniform(0.5, 1.0) * vfov / 2)
                if box.kind == "panel":
                    normal_az = 0.0 if box.facing_axis == 0 else np.pi / 2
                    azimuth = normal_az + rng.choice([0.0, np.pi]) + rng.uniform(-1.0, 1.0)
                else:
                    azimuth = rng.uniform(0, 2 * np.pi)
                target = centre + rng.uniform(-0.1, 0.1, 3) * (box.hi - box.lo)
            eye_h = rng.uniform(0.45, 2.1)
            eye = target + distance * np.array([np.cos(azimuth), np.sin(azimuth), 0.0])
            eye[2] = eye_h
            if np.any(eye < room.lo + 0.25) or np.any(eye > room.hi - 0.25):
                continue
            if any(np.all((eye > b.lo - 0.3) & (eye < b.hi + 0.3)) for b in scene.boxes):
                continue
            cam = look_at_camera(eye, target, K, cfg.width, cfg.height, name=f"{i:04d}")
            shown = [scene.boxes[j] for j in pick] if overview else [box]
            frame, unoccluded, clutter = _coverage(scene, cam, shown)
            # The aimed-at objects must be well visible, and the others must not fill the frame.
            min_frame = 0.03 if overview else 0.12
            if np.any(frame < min_frame) or np.any(unoccluded < 0.6) or clutter > 0.2:
                continue
            cameras.append(cam)
            break
        else:
            raise RuntimeError(f"could not place camera {i} with a clear view; try another seed or a larger room")
    return cameras


# ---------------------------------------------------------------------------------------------
# point cloud


def sample_surface_points(scene: Scene, n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random points on the visible surfaces (object faces except bottoms; room floor, walls,
    ceiling) with their shaded colours: half on the objects, half on the room, by area."""
    rng = np.random.default_rng([seed, 2])
    faces = []  # (lo, hi, axis, sign, owner id)
    for b in scene.boxes:
        for ax in range(3):
            for sign in (-1.0, 1.0):
                if ax == 2 and sign < 0:
                    continue  # bottom rests on the floor
                faces.append((b.lo, b.hi, ax, sign, b.instance_id))
    room_faces = [(scene.room.lo, scene.room.hi, ax, sign, 0) for ax in range(3) for sign in (-1.0, 1.0)]

    def area(f):
        size = f[1] - f[0]
        return float(np.prod(np.delete(size, f[2])))

    pts, normals, ids = [], [], []
    for group, count in ((faces, n_points // 2), (room_faces, n_points - n_points // 2)):
        if not group:
            continue
        areas = np.array([area(f) for f in group])
        which = rng.choice(len(group), size=count, p=areas / areas.sum())
        for k, f in enumerate(group):
            m = int(np.count_nonzero(which == k))
            if m == 0:
                continue
            lo, hi, ax, sign, owner = f
            p = rng.uniform(lo, hi, size=(m, 3))
            on_max = sign > 0
            if owner == 0:
                on_max = not on_max  # room faces are seen from inside
            p[:, ax] = hi[ax] if on_max else lo[ax]
            n = np.zeros((m, 3))
            n[:, ax] = sign if owner != 0 else -sign
            pts.append(p)
            normals.append(n)
            ids.append(np.full(m, owner, dtype=np.int32))
    points = np.concatenate(pts)
    normal = np.concatenate(normals)
    instance = np.concatenate(ids)
    axis = np.abs(normal).argmax(axis=1)
    colour = shade(scene, points, normal, albedo(scene, points, instance, axis, normal))
    return points, normal, colour


def _write_ply(path: Path, points: np.ndarray, normals: np.ndarray, colours: np.ndarray) -> None:
    from plyfile import PlyData, PlyElement

    dtype = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
             ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(points), dtype=dtype)
    for k, name in enumerate("xyz"):
        vertex[name] = points[:, k]
        vertex["n" + name] = normals[:, k]
    rgb8 = np.clip(np.round(colours * 255), 0, 255).astype(np.uint8)
    for k, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb8[:, k]
    write_with(path, lambda tmp: PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp)))


# ---------------------------------------------------------------------------------------------
# dataset writer


def _write_png(path: Path, array: np.ndarray) -> None:
    write_with(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def make_scene(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0, overwrite: bool = False,
               **overrides) -> Path:
    """Generate a labelled scene dataset in `out_dir` and return its path.

    The scene is written into a temporary directory beside `out_dir` and renamed into place at
    the end, so an interrupted run leaves no partial dataset. `overrides` replace preset fields
    of `SceneConfig` (width, height, n_views, objects, ...). An existing `out_dir` is an error
    unless `overwrite` is set.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass --overwrite, or overwrite=True in Python, to replace it)")
    config = preset_config(preset, **overrides)
    scene = build_scene(config, seed)
    cameras = sample_cameras(scene, seed)

    return _into_place(out_dir, lambda tmp: _write_dataset(tmp, scene, cameras, preset, seed))


def _into_place(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` on a temporary directory beside `out_dir`, then rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        meta_path = tmp / "transforms.json"
        if not meta_path.exists():
            raise RuntimeError(f"{meta_path}: not written")
        if out_dir.exists():
            # Move the old dataset aside first so that the rename below cannot half-replace it.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def video_path(scene: Scene, n_frames: int) -> list[Camera]:
    """A smooth closed camera path for a walk-through video: once round the room on a rounded
    square (|x|^4 + |y|^4 = a^4) 0.35 m inside the walls, outside the objects' area (they keep
    1.3 m from the walls, see build_scene), gently rising and falling, looking down at the room's
    middle. Kept away from the objects: close by, a frame-to-frame step changes too much of the
    view for SIFT (a path 0.65 m from the walls posed 14 of 32 frames; this one 40 of 40). The
    last frame stops one step short of the first, so the video comes back to where it started
    (a loop for SfM to close)."""
    cfg = scene.config
    room = scene.room
    K = intrinsics(cfg)
    half = 0.5 * (room.hi[:2] - room.lo[:2])
    a = half - 0.35
    theta = 2.0 * np.pi * np.arange(n_frames) / n_frames
    r = 1.0 / (np.cos(theta) ** 4 + np.sin(theta) ** 4) ** 0.25  # smooth: the denominator never vanishes
    mid = 0.5 * (room.lo + room.hi)
    eyes = np.stack([mid[0] + a[0] * r * np.cos(theta), mid[1] + a[1] * r * np.sin(theta),
                     1.7 + 0.2 * np.sin(2.0 * theta)], axis=1)
    targets = np.stack([mid[0] + 0.3 * np.cos(3.0 * theta), mid[1] + 0.3 * np.sin(3.0 * theta),
                        np.full(n_frames, 0.4)], axis=1)
    return [look_at_camera(e, g, K, cfg.width, cfg.height, name=f"frame_{k:05d}")
            for k, (e, g) in enumerate(zip(eyes, targets))]


def make_video(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0, frames: int = 120, fps: float = 30.0,
               overwrite: bool = False, progress: bool = False, **overrides) -> Path:
    """Render the scene of `preset`/`seed` along `video_path` into out_dir/video.mp4, with its true
    poses beside it in out_dir/transforms.json (one frame per video frame; file_path
    images/frame_<index>.jpg, the names `fmsplat process-data` gives the frames it keeps, so
    sfm.pose_errors can compare them by name). Default size 320x240 (SIFT finds too little in
    the tiny preset's 128x96); `overrides` replace SceneConfig fields. Written atomically."""
    from fmsplat.pictures import write_video

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass --overwrite, or overwrite=True in Python, to replace it)")
    if frames < 2 or not fps > 0:
        raise ValueError(f"make_video: needs frames >= 2 and fps > 0, got {frames} and {fps}")
    overrides = {"width": 320, "height": 240, "distinct_faces": True, **overrides}
    if overrides["width"] % 2 or overrides["height"] % 2:
        raise ValueError(f"make_video: width and height must be even (H.264), got {overrides['width']}x{overrides['height']}")
    config = preset_config(preset, **overrides)
    scene = build_scene(config, seed)
    cameras = video_path(scene, frames)

    def write(root: Path) -> None:
        from tqdm import tqdm

        def rendered():
            for cam in tqdm(cameras, desc="render", disable=not progress, dynamic_ncols=True):
                yield np.round(render_view(scene, cam, config.supersample)[0] * 255).astype(np.uint8)

        write_video(root / "video.mp4", rendered(), fps)
        K = intrinsics(config)
        write_json(root / "transforms.json", {
            "camera_model": "OPENCV",
            "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "w": config.width, "h": config.height,
            "fmsplat_synthetic": {"generator": "fmsplat.scene.synthetic.make_video", "generator_version": GENERATOR_VERSION,
                                  "preset": preset, "seed": seed, "video": "video.mp4", "fps": fps,
                                  "room_aabb": {"min": scene.room.lo.tolist(), "max": scene.room.hi.tolist()}},
            "frames": [{"file_path": f"images/frame_{k:05d}.jpg", "frame_index": k, "time": k / fps,
                        "transform_matrix": (cam.c2w @ GL_TO_CV).tolist()} for k, cam in enumerate(cameras)],
        })

    return _into_place(out_dir, write)


def _write_dataset(root: Path, scene: Scene, cameras: list[Camera], preset: str, seed: int) -> None:
    cfg = scene.config
    K = intrinsics(cfg)
    id_to_label = {b.instance_id: b.label for b in scene.boxes}
    min_pixels = max(1, int(round(cfg.min_label_fraction * cfg.width * cfg.height)))
    frames = []
    labelled = []
    for i, cam in enumerate(cameras):
        stem = f"{i:04d}"
        rgb, instance, depth = render_view(scene, cam, cfg.supersample)
        _write_png(root / "images" / f"{stem}.png", np.round(rgb * 255).astype(np.uint8))
        _write_png(root / "instances" / f"{stem}.png", instance.astype(np.uint16))
        _write_png(root / "depth" / f"{stem}.png", np.round(depth * 1000.0).astype(np.uint16))
        if i % cfg.label_every == 0:
            # Label the objects a person would name in this view: large enough, and not mostly
            # hidden behind others or cut off by the frame.
            counts = np.bincount(instance.reshape(-1), minlength=len(scene.boxes) + 1)
            shown = {
                b.instance_id: b.label
                for b in scene.boxes
                if counts[b.instance_id] >= min_pixels
                and counts[b.instance_id] >= cfg.min_visible_share * _silhouette_pixels(scene, cam, b)
            }
            labels = labels_from_instances(instance, shown, name=f"{stem}.png", min_pixels=min_pixels)
            write_view_labels(root / "labels" / f"{stem}.json", labels)
            labelled.append(stem)
        c2w_gl = cam.c2w @ GL_TO_CV
        frames.append({
            "file_path": f"images/{stem}.png",
            "depth_file_path": f"depth/{stem}.png",
            "instance_file_path": f"instances/{stem}.png",
            "transform_matrix": c2w_gl.tolist(),
        })

    points, normals, colours = sample_surface_points(scene, cfg.n_points, seed)
    _write_ply(root / "points3d.ply", points, normals, colours)

    scene_meta = {
        "generator": "fmsplat.scene.synthetic",
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "up": UP.tolist(),
        "room_aabb": {"min": scene.room.lo.tolist(), "max": scene.room.hi.tolist()},
        "label_every": cfg.label_every,
        "labelled_views": labelled,
        "depth_unit": "millimetre z-depth (camera frame), uint16 PNG",
        "instances": "uint16 PNG, 0 = room",
    }
    objects = [
        SceneObjectInfo(b.instance_id, b.label, list(b.synonyms), b.lo.copy(), b.hi.copy(),
                        extra={"kind": b.kind, "photo": b.source})
        for b in scene.boxes
    ]
    write_objects(root / "objects.json", objects, scene_meta)
    write_json(root / "transforms.json", {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": cfg.width, "h": cfg.height,
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "depth_unit_scale_factor": 0.001,
        "ply_file_path": "points3d.ply",
        "fmsplat_synthetic": scene_meta,
        "frames": frames,
    })


def load_instances(path: str | Path) -> np.ndarray:
    """Instance-id image written by `make_scene` (int32, 0 = room)."""
    return np.asarray(Image.open(path), dtype=np.int32)


def load_depth(path: str | Path, scale: float = 0.001) -> np.ndarray:
    """Z-depth image written by `make_scene`, in metres (float32)."""
    return (np.asarray(Image.open(path), dtype=np.float64) * scale).astype(np.float32)
