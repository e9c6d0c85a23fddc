"""Cameras of the synthetic room: look-at poses, intrinsics from the config, the sampled views of a
labelled scene, the closed path of a walk-through video, and per-box visibility counts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fmsplat.scene.cameras import Camera
from fmsplat.scene.synthetic.layout import Box, Scene, SceneConfig
from fmsplat.scene.synthetic.raycast import camera_rays, intersect

UP = np.array([0.0, 0.0, 1.0])


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


def silhouette_pixels(scene: Scene, camera: Camera, box: Box) -> float:
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
