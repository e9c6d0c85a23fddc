"""Renders for people: render | photo | error panels of views, camera paths, MP4 videos.

A reconstruction that failed (floaters, a blurred or empty scene, a wrong pose convention) is
obvious in a picture and easy to miss in a PSNR number, so `fmsplat train` writes panels of a few
held-out views and `fmsplat render SCENE` writes panels of any views or a video along a path:

    write_view_panels(model, data, data.test_indices, "scene/renders/test")   # PNG per view
    cams = orbit_path(data.cameras, 120)                       # or interpolated_path, spiral_path
    render_video(model, cams, "scene/renders/orbit.mp4", fps=30)

What it draws comes from fmsplat.pictures (panels, PNG, MP4); the colours from fmsplat.render.rgb.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fmsplat.gaussians import GaussianModel
from fmsplat.pictures import comparison_panel, to_uint8, write_png, write_video
from fmsplat.render.rgb import render_image
from fmsplat.scene import Camera, SceneDataset
from fmsplat.scene.cameras import look_at_point


# ------------------------------------------------------------------------------------------ panels
def view_stem(camera: Camera, index: int) -> str:
    """File-name stem of a view: its image name without folders or extension ('images/0008.png' ->
    '0008'), made filesystem-safe; `view_<index>` when the camera has no name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(camera.name).stem).strip("-.") if camera.name else ""
    return stem or f"view_{index:04d}"


def write_view_panels(model: GaussianModel, data: SceneDataset, indices, out_dir,
                      background=(0.0, 0.0, 0.0)) -> list[Path]:
    """One comparison_panel PNG per view of `data` in `indices`, named after the view, written
    atomically into `out_dir`. Returns the paths, in the order of `indices`."""
    out_dir = Path(out_dir)
    paths, used = [], set()
    for i in (int(i) for i in indices):
        cam = data.cameras[i]
        stem = view_stem(cam, i)
        if stem in used:  # two images of one name in different folders
            stem = f"{stem}_{i:04d}"
        used.add(stem)
        mask = data.valid_mask(i)
        panel = comparison_panel(render_image(model, cam, background), data.image(i), None if mask.all() else mask)
        paths.append(write_png(out_dir / f"{stem}.png", panel))
    return paths


def evenly_spaced(indices, k: int) -> list[int]:
    """Up to `k` entries of `indices` spread evenly over it, first and last included."""
    indices = [int(i) for i in indices]
    if k <= 0 or not indices:
        return []
    picks = np.unique(np.linspace(0, len(indices) - 1, min(k, len(indices))).round().astype(int))
    return [indices[j] for j in picks]


# ------------------------------------------------------------------------------------------ paths
def _rotations(cameras) -> np.ndarray:
    return np.stack([np.asarray(c.viewmat, np.float64)[:3, :3] for c in cameras])


def _centers(cameras) -> np.ndarray:
    return np.stack([c.center for c in cameras])


def _look_at_viewmats(eyes: np.ndarray, targets: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(F, 4, 4) world-to-camera matrices (OpenCV) at `eyes` looking at `targets`, image up ≈ `up`."""
    z = targets - eyes
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    x = np.cross(-up, z)  # OpenCV: x = y × z with y (down) = -up
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if (n < 1e-8).any():
        raise ValueError("camera path: a viewing direction is parallel to the up axis")
    x /= n
    y = np.cross(z, x)
    rot = np.stack([x, y, z], axis=1)  # rows: camera axes in world coordinates
    view = np.tile(np.eye(4), (len(eyes), 1, 1))
    view[:, :3, :3] = rot
    view[:, :3, 3] = -np.einsum("fij,fj->fi", rot, eyes)
    return view


def _path_cameras(viewmats: np.ndarray, Ks, width: int, height: int, prefix: str) -> list[Camera]:
    Ks = np.broadcast_to(np.asarray(Ks, np.float64), (len(viewmats), 3, 3))
    return [Camera(K=Ks[k].copy(), viewmat=v, width=width, height=height, name=f"{prefix}_{k:04d}")
            for k, v in enumerate(viewmats)]


ORBIT_MAX_GAP = np.deg2rad(60.0)  # an azimuth gap wider than this: sweep the covered arc instead


def orbit_path(cameras, n_frames: int) -> list[Camera]:
    """`n_frames` cameras on a circle around the point the dataset cameras look at (scene.cameras.look_at_point),
    all looking at it, with the first camera's intrinsics and image size.

    Up is the mean of the cameras' up vectors; the circle lies at the cameras' mean height above
    the target along up, with their mean horizontal distance as radius, starting at the first
    camera's azimuth and going once round (the last frame stops one step short of the first, so
    the video loops). A capture that covers only an arc (an object on a wall, a façade: the
    cameras' azimuths leave a gap wider than ORBIT_MAX_GAP) is not circled into the unseen side:
    the path sweeps to and fro over the arc the cameras cover, smoothly (sine), and loops too."""
    cameras = list(cameras)
    if not cameras:
        raise ValueError("orbit_path: no cameras")
    if n_frames < 1:
        raise ValueError(f"orbit_path: n_frames must be >= 1, got {n_frames}")
    target = look_at_point(cameras, strict=False)
    up = -_rotations(cameras)[:, 1, :].mean(0)  # OpenCV y points down
    if np.linalg.norm(up) < 1e-8:
        raise ValueError("orbit_path: the cameras disagree on which way is up")
    up /= np.linalg.norm(up)
    off = _centers(cameras) - target
    heights = off @ up
    flat = off - heights[:, None] * up
    radius = float(np.linalg.norm(flat, axis=1).mean())
    if radius < 1e-9:
        raise ValueError("orbit_path: the cameras stand on the axis through their target; no circle to orbit")
    e1 = flat[0] if np.linalg.norm(flat[0]) > 1e-9 * radius else flat[np.argmax(np.linalg.norm(flat, axis=1))]
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    phase = 2.0 * np.pi * np.arange(n_frames) / n_frames
    azimuth = np.sort(np.arctan2(flat @ e2, flat @ e1))
    gaps = np.diff(np.concatenate([azimuth, azimuth[:1] + 2.0 * np.pi]))
    widest = int(np.argmax(gaps))
    second = np.partition(gaps, -2)[-2] if len(gaps) > 1 else 0.0
    # One gap much wider than any other: an arc. Evenly spread cameras (all gaps alike) circle.
    if gaps[widest] > ORBIT_MAX_GAP and gaps[widest] > 3.0 * second:
        # The covered arc runs from the camera after the widest gap to the one before it.
        lo = azimuth[(widest + 1) % len(azimuth)]
        span = 2.0 * np.pi - gaps[widest]
        mid = lo + 0.5 * span
        theta = mid + 0.5 * span * np.sin(phase)
    else:
        theta = phase
    eyes = target + heights.mean() * up + radius * (np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * e2)
    views = _look_at_viewmats(eyes, np.broadcast_to(target, eyes.shape), up)
    first = cameras[0]
    return _path_cameras(views, first.K, first.width, first.height, "orbit")


FORWARD_MAX_ANGLE = np.deg2rad(40.0)  # every view within this of the mean direction: a forward-facing capture


def is_forward_facing(cameras) -> bool:
    """The cameras all look about the same way (within FORWARD_MAX_ANGLE of their mean direction) at no
    single point in front of them (look_at_point finds none): LLFF's fern, a room shot from its door."""
    cameras = list(cameras)
    axes = _rotations(cameras)[:, 2, :]
    mean = axes.mean(0)
    if np.linalg.norm(mean) < 1e-8:
        return False
    mean /= np.linalg.norm(mean)
    return bool(np.arccos(np.clip(axes @ mean, -1, 1)).max() <= FORWARD_MAX_ANGLE
                and look_at_point(cameras, strict=True) is None)


def _mean_camera(cameras) -> tuple[np.ndarray, np.ndarray]:
    """(the mean world-to-camera rotation (rows: right, down, forward), the mean centre) of `cameras`."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(_rotations(cameras)).mean().as_matrix(), _centers(cameras).mean(0)


def focus_depth(model: GaussianModel, cameras, min_opacity: float = 0.5) -> float | None:
    """Median depth ahead of the mean camera of the opaque Gaussians in front of it (None: none): where a
    spiral_path looks."""
    rot, mean = _mean_camera(cameras)
    opaque = (1.0 / (1.0 + np.exp(-model.opacities.detach().cpu().numpy()))) >= min_opacity
    depth = (model.means.detach().cpu().numpy()[opaque] - mean) @ rot[2]
    depth = depth[depth > 0]
    return float(np.median(depth)) if len(depth) else None


def spiral_path(cameras, n_frames: int, focus_depth: float | None = None, turns: float = 2.0) -> list[Camera]:
    """`n_frames` cameras on a spiral around the mean camera of a forward-facing capture, all looking at a
    point `focus_depth` ahead of it (default: 5x the spread of the camera centres), never behind the
    capture: the NeRF world's path for LLFF scenes. The spiral's radii are the 90th percentiles of the
    centres' offsets along the mean camera's right, down and forward axes (forward at half), `turns` times
    round; the last frame stops one step short of the first, so the video loops."""
    cameras = list(cameras)
    if not cameras:
        raise ValueError("spiral_path: no cameras")
    if n_frames < 1:
        raise ValueError(f"spiral_path: n_frames must be >= 1, got {n_frames}")
    rot, mean = _mean_camera(cameras)
    local = (_centers(cameras) - mean) @ rot.T
    radii = np.percentile(np.abs(local), 90, axis=0)
    spread = float(np.linalg.norm(radii))
    depth = float(focus_depth) if focus_depth is not None and focus_depth > 0 else 5.0 * max(spread, 1e-3)
    t = turns * 2.0 * np.pi * np.arange(n_frames) / n_frames
    offsets = np.stack([radii[0] * np.cos(t), radii[1] * np.sin(t), 0.5 * radii[2] * np.sin(0.5 * t)], axis=1)
    eyes = mean + offsets @ rot
    focus = mean + depth * rot[2]
    views = _look_at_viewmats(eyes, np.broadcast_to(focus, eyes.shape), -rot[1])
    first = cameras[0]
    return _path_cameras(views, first.K, first.width, first.height, "spiral")


def interpolated_path(cameras, n_frames: int) -> list[Camera]:
    """`n_frames` cameras through the dataset cameras in their order: rotations slerped, centres on
    a cubic spline (linear for two cameras), intrinsics interpolated linearly (each scaled to the
    first camera's image size, which all frames have).

    Frame k sits at s = k (m-1)/(n_frames-1) along the m cameras, so camera j is frame
    j (n_frames-1)/(m-1) whenever that is a whole number (n_frames = q (m-1) + 1 hits them all)."""
    from scipy.interpolate import CubicSpline
    from scipy.spatial.transform import Rotation, Slerp

    cameras = list(cameras)
    if not cameras:
        raise ValueError("interpolated_path: no cameras")
    if n_frames < 1:
        raise ValueError(f"interpolated_path: n_frames must be >= 1, got {n_frames}")
    first = cameras[0]
    m = len(cameras)
    Ks = np.stack([c.resized(first.width, first.height).K for c in cameras])
    if m == 1:
        return _path_cameras(np.repeat(first.viewmat[None], n_frames, 0), Ks[0], first.width, first.height, "path")
    s = np.linspace(0.0, m - 1, n_frames) if n_frames > 1 else np.zeros(1)
    knots = np.arange(m, dtype=np.float64)
    rot = Slerp(knots, Rotation.from_matrix(_rotations(cameras)))(s).as_matrix()
    centers = _centers(cameras)
    eyes = CubicSpline(knots, centers, axis=0)(s) if m > 2 else centers[0] + s[:, None] * (centers[1] - centers[0])
    views = np.tile(np.eye(4), (len(s), 1, 1))
    views[:, :3, :3] = rot
    views[:, :3, 3] = -np.einsum("fij,fj->fi", rot, eyes)
    # linear interpolation of K between the keyframes, element-wise
    lo = np.clip(np.floor(s).astype(int), 0, m - 2)
    w = (s - lo)[:, None, None]
    K = (1.0 - w) * Ks[lo] + w * Ks[lo + 1]
    return _path_cameras(views, K, first.width, first.height, "path")


# ------------------------------------------------------------------------------------------ video
def render_video(model: GaussianModel, cameras, path, fps: float = 30.0, background=(0.0, 0.0, 0.0),
                 frames_dir=None, progress: bool = True, codec: str | None = None) -> Path | None:
    """Render `cameras` in order and write them as an MP4 at `path` (H.264 through libx264 when PyAV
    has it, else MPEG-4 part 2; yuv420p; odd sizes padded to even), atomically: a temp file beside
    `path`, renamed when complete. `frames_dir` also writes each frame as frame_<k>.png; `path`
    None writes only those. Returns `path` (None when not given)."""
    cameras = list(cameras)
    if not cameras:
        raise ValueError("render_video: no cameras")
    if path is None and frames_dir is None:
        raise ValueError("render_video: give a video path, a frames folder, or both")
    if not fps > 0:
        raise ValueError(f"render_video: fps must be positive, got {fps}")

    def frames():
        for k, cam in enumerate(tqdm(cameras, desc="render", disable=not progress, dynamic_ncols=True)):
            frame = to_uint8(render_image(model, cam, background))
            if frames_dir is not None:
                write_png(Path(frames_dir) / f"frame_{k:04d}.png", frame)
            yield frame

    if path is None:
        for _ in frames():
            pass
        return None

    return write_video(path, frames(), fps, pad_odd=True, codec=codec)


__all__ = ["evenly_spaced", "focus_depth", "interpolated_path", "is_forward_facing", "orbit_path", "spiral_path", "render_video", "view_stem",
           "write_view_panels"]
