"""LLFF datasets (Mildenhall et al. 2019, "Local Light Field Fusion"; the forward-facing NeRF scenes:
fern, flower, room, trex, ...): `poses_bounds.npy` beside `images/`.

poses_bounds.npy holds one row of 17 numbers per image, the images taken in sorted file-name order:
a 3x5 matrix, row-major (the camera-to-world rotation's columns, its centre, then the image height,
width and focal length in pixels of the full-size images), and the near and far depth bounds of the
scene points that camera sees. LLFF's rotation columns point down, right and backwards; fmsplat's
cameras are OpenCV (right, down, forwards), so c2w_cv = [right, down, forwards] = [c1, c0, -c2].

Folders images_<n>/ holding every image n times smaller are read instead of images/ when the
training resolution is at most 1/n of it (SceneDataset.image_file). The images may be smaller than the
stored height and width (a dataset shipped with images_4/ only
renamed to images/, say): the focal length is scaled with them, and an image of another aspect ratio
is refused. The bounds become the scene box (every camera's frustum between its near and far bounds):
triangulation and random starts stay inside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmsplat.scene.cameras import Camera
from fmsplat.scene.errors import DatasetError
from fmsplat.scene.images import IMAGE_EXTENSIONS, image_size
from fmsplat.scene.raw import RawScene

POSES_BOUNDS = "poses_bounds.npy"


def is_llff(root: Path) -> bool:
    return (Path(root) / POSES_BOUNDS).is_file()


def read_llff(root: Path) -> RawScene:
    root = Path(root)
    path = root / POSES_BOUNDS
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a NumPy array file ({err})") from None
    if data.ndim != 2 or data.shape[1] != 17 or len(data) == 0:
        raise DatasetError(f"{path}: expected an (N, 17) array (a 3x5 pose and near, far per image), "
                           f"got shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.integer):
        raise DatasetError(f"{path}: expected numbers, got dtype {data.dtype}")
    data = data.astype(np.float64)
    bad = np.argwhere(~np.isfinite(data))
    if len(bad):
        raise DatasetError(f"{path}: row {bad[0][0]}, column {bad[0][1]} is {data[tuple(bad[0])]}; every value must be finite")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{root}: no images/ folder beside {POSES_BOUNDS}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if len(images) != len(data):
        raise DatasetError(f"{path}: {len(data)} poses, but {image_dir} holds {len(images)} images; LLFF pairs "
                           "them in sorted file-name order, so the counts must match")
    poses = data[:, :15].reshape(-1, 3, 5)
    bounds = data[:, 15:]
    cameras, corners = [], []
    for i, (pose, (near, far), image) in enumerate(zip(poses, bounds, images)):
        where = f"{path}: row {i} ({image.name})"
        h, w, f = pose[:, 4]
        if not (h >= 1 and w >= 1 and f > 0):
            raise DatasetError(f"{where}: height {h:g}, width {w:g} and focal length {f:g} must be positive")
        if not 0 < near < far:
            raise DatasetError(f"{where}: the bounds must satisfy 0 < near < far, got near {near:g}, far {far:g}")
        rot = pose[:, :3]
        if abs(abs(np.linalg.det(rot)) - 1.0) > 1e-3 or not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3):
            raise DatasetError(f"{where}: the 3x3 rotation is not orthonormal (det {np.linalg.det(rot):.4f})")
        iw, ih = image_size(image)
        scale = iw / w
        if abs(ih / h - scale) > 0.01 * scale:
            raise DatasetError(f"{where}: the image is {iw}x{ih}, the pose says {w:g}x{h:g} (another aspect ratio)")
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([rot[:, 1], rot[:, 0], -rot[:, 2]], axis=1)  # LLFF [down, right, back] -> OpenCV
        c2w[:3, 3] = pose[:, 3]
        fx = f * scale
        K = np.array([[fx, 0.0, iw / 2], [0.0, fx, ih / 2], [0.0, 0.0, 1.0]])
        cameras.append(Camera(K=K, viewmat=np.linalg.inv(c2w), width=iw, height=ih, image_path=image,
                              name=f"images/{image.name}"))
        for depth in (near, far):  # the frustum's corners at both bounds, in world space
            for u, v in ((0, 0), (iw, 0), (0, ih), (iw, ih)):
                ray = np.array([(u - iw / 2) / fx, (v - ih / 2) / fx, 1.0])
                corners.append(c2w[:3, :3] @ (ray * depth) + c2w[:3, 3])
    corners = np.asarray(corners)
    return RawScene(cameras=cameras, format="llff", pose_file=path,
                    scene_box=(corners.min(axis=0), corners.max(axis=0)), intrinsics_file=path,
                    downscaled_dirs=_downscaled_dirs(root, cameras))


def _downscaled_dirs(root: Path, cameras: list[Camera]) -> dict[int, Path]:
    """LLFF's images_<n>/ folders that hold every image, n times smaller (within a pixel); others are
    ignored (a partial or mis-sized folder must not replace a single view's pixels)."""
    out = {}
    for folder in sorted(root.glob("images_*")):
        tail = folder.name[len("images_"):]
        if not folder.is_dir() or not tail.isdigit() or int(tail) < 2:
            continue
        n = int(tail)
        ok = True
        for cam in cameras:
            f = folder / cam.image_path.name
            if not f.is_file():
                ok = False
                break
            w, h = image_size(f)
            if abs(w - cam.width / n) > 1 or abs(h - cam.height / n) > 1:
                ok = False
                break
        if ok:
            out[n] = folder
    return out


__all__ = ["POSES_BOUNDS", "is_llff", "read_llff"]
