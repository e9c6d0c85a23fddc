"""Exact ray casting of the synthetic room in numpy/numba: box intersection, texturing, diffuse
shading with cast shadows, and the render of a view (RGB, instance ids, z-depth)."""

from __future__ import annotations

import numba
import numpy as np

from fmsplat.scene.cameras import Camera
from fmsplat.scene.synthetic.layout import Box, Scene


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
