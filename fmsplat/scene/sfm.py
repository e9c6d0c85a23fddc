"""Structure from motion with pycolmap: SIFT features, pose-aware matching and triangulation.

The one SfM module of fmsplat. Today it serves posed datasets that carry no points
(transforms.json from instant-ngp, Blender, nerfstudio without `ply_file_path`): their poses and
intrinsics are kept, and points are triangulated from feature tracks, which is what 3DGS
initialises from (Kerbl et al. 2023 start from COLMAP's sparse points; a random start misses a
scene the cameras look at from outside, see bench/README.md "Reconstruction").

Entry point: `triangulate_dataset(data, work_dir, SfmConfig())` -> `SparseCloud`. The work folder
keeps COLMAP's database, the images it read, the sparse model (`sparse/`, readable by any COLMAP
tool and by fmsplat's COLMAP reader) and `points.ply`; a finished run is reused when its inputs
and settings match (`report.json`), an unfinished one starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fmsplat import atomic
from fmsplat.scene.errors import DatasetError

REPORT = "report.json"


@dataclass
class SfmConfig:
    """Settings of the SfM stage; the defaults are sized for a 2-core CPU (fox: 67 photos of
    1080x1920 triangulated in about 2 minutes, bench/README.md "Reconstruction")."""

    max_image_size: int = 960
    """Longest image side given to SIFT (photos are downscaled by a power of two to fit)."""
    max_features: int = 4096
    """SIFT features per image (COLMAP's default is 8192; half keeps matching fast and is plenty
    for an initialisation)."""
    neighbours: int = 15
    """Each view is matched with this many others, the closest in position and viewing direction
    (poses are known); 0 matches every pair (exhaustive)."""
    max_reprojection_error: float = 2.0
    """Points whose mean reprojection error (pixels at the SfM size) exceeds this are dropped."""
    min_track_length: int = 2
    """Points seen in fewer views are dropped."""

    def __post_init__(self) -> None:
        if self.max_image_size < 64:
            raise ValueError(f"SfmConfig.max_image_size must be >= 64, got {self.max_image_size}")
        if self.max_features < 64:
            raise ValueError(f"SfmConfig.max_features must be >= 64, got {self.max_features}")
        if self.neighbours < 0:
            raise ValueError(f"SfmConfig.neighbours must be >= 0, got {self.neighbours}")
        if not self.max_reprojection_error > 0:
            raise ValueError(f"SfmConfig.max_reprojection_error must be positive, got {self.max_reprojection_error}")
        if self.min_track_length < 2:
            raise ValueError(f"SfmConfig.min_track_length must be >= 2, got {self.min_track_length}")


@dataclass
class SparseCloud:
    """Triangulated points (P, 3) in world coordinates with colours (P, 3) in [0, 1], their
    reprojection errors (px) and track lengths, and the run's report (counts, seconds)."""

    points: np.ndarray
    colors: np.ndarray
    errors: np.ndarray
    track_lengths: np.ndarray
    report: dict


def view_pairs(cameras, neighbours: int, extent: float | None = None) -> list[tuple[int, int]]:
    """Pairs (i < j) of views worth matching: each view with its `neighbours` nearest in a
    distance that adds the centres' separation (in scene extents) to one minus the cosine
    between the viewing directions, so that views looking away from each other rank last.
    neighbours = 0 or >= len-1: every pair."""
    n = len(cameras)
    if neighbours <= 0 or neighbours >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    centers = np.stack([c.center for c in cameras])
    axes = np.stack([c.viewmat[2, :3] for c in cameras])  # world direction of each camera's +z
    if extent is None:
        extent = max(float(np.linalg.norm(centers - centers.mean(0), axis=1).max()), 1e-9)
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1) / extent + (1.0 - axes @ axes.T)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1)[:, :neighbours]
    pairs = {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in nearest[i]}
    return sorted(pairs)


def _inputs_key(data, indices: list[int], cfg: SfmConfig, downscale: float) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"config": asdict(cfg), "downscale": downscale, "views": indices}).encode())
    for i in indices:
        cam = data.cameras[i]
        digest.update(str(cam.image_path).encode())
        digest.update(np.ascontiguousarray(cam.viewmat).tobytes())
        digest.update(np.ascontiguousarray(cam.K).tobytes())
    return digest.hexdigest()


def sfm_downscale(data, max_image_size: int) -> float:
    """The power-of-two downscale of the stored photos whose longest side fits max_image_size."""
    raw_side = max(max(c.width, c.height) for c in data.raw_cameras)
    factor = 1.0
    while raw_side / factor > max_image_size:
        factor *= 2.0
    return factor


def triangulate_dataset(data, work_dir, cfg: SfmConfig | None = None, indices=None, box=None,
                        progress: bool = True) -> SparseCloud:
    """Triangulate points for the posed `data` (a SceneDataset) from the views `indices`
    (default: its training views, so held-out views stay unseen), keeping its poses and
    intrinsics. `box` = (lo, hi) drops points outside it (a dataset's declared scene bounds).
    Work files go to `work_dir`; a finished run with the same inputs is loaded, not redone."""
    import pycolmap

    cfg = cfg or SfmConfig()
    work = Path(work_dir)
    indices = [int(i) for i in (data.train_indices if indices is None else indices)]
    if len(indices) < 2:
        raise DatasetError(f"{data.source}: triangulation needs at least 2 views, got {len(indices)}")
    downscale = sfm_downscale(data, cfg.max_image_size)
    key = _inputs_key(data, indices, cfg, downscale)
    cached = _load_finished(work, key, box)
    if cached is not None:
        return cached
    if work.exists():
        shutil.rmtree(work)  # an unfinished or different run: its database cannot be trusted
    (work / "images").mkdir(parents=True)
    seconds: dict[str, float] = {}
    _quiet_colmap(pycolmap)
    sfm_data = data.at_downscale(downscale)

    stages = tqdm(total=4, desc="SfM", disable=not progress, dynamic_ncols=True)
    t = time.perf_counter()
    names = [f"{k:05d}.jpg" for k in range(len(indices))]
    for name, i in zip(tqdm(names, desc="SfM images", disable=not progress, leave=False), indices):
        rgb = (np.asarray(sfm_data.image(i)) * 255.0 + 0.5).astype(np.uint8)
        Image.fromarray(rgb).save(work / "images" / name, quality=95)
    seconds["images"] = time.perf_counter() - t
    stages.set_postfix_str("SIFT features")
    stages.update()

    t = time.perf_counter()
    db_path = work / "database.db"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = cfg.max_features
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"
    pycolmap.extract_features(db_path, work / "images", image_names=names,
                              camera_mode=pycolmap.CameraMode.PER_IMAGE, reader_options=reader,
                              extraction_options=extraction)
    db = pycolmap.Database.open(db_path)
    try:
        db_images = {im.name: im for im in db.read_all_images()}
        missing = [n for n in names if n not in db_images]
        if missing:
            raise DatasetError(f"{work}: COLMAP could not read {len(missing)} images (first: {missing[0]})")
        # The known intrinsics replace COLMAP's guesses before matching: two-view geometry uses them.
        for name, i in zip(names, indices):
            cam = db.read_camera(db_images[name].camera_id)
            K = sfm_data.cameras[i].K
            cam.params = np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
            cam.has_prior_focal_length = True
            db.update_camera(cam)
        keypoints = int(sum(db.num_keypoints_for_image(db_images[n].image_id) for n in names))
    finally:
        db.close()
    seconds["features"] = time.perf_counter() - t
    stages.set_postfix_str("matching")
    stages.update()

    t = time.perf_counter()
    pairs = view_pairs([sfm_data.cameras[i] for i in indices], cfg.neighbours, data.extent)
    pairs_file = work / "pairs.txt"
    pairs_file.write_text("".join(f"{names[a]} {names[b]}\n" for a, b in pairs))
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = pairs_file
    pycolmap.match_image_pairs(db_path, pairing_options=pairing)
    seconds["matching"] = time.perf_counter() - t
    stages.set_postfix_str("triangulation")
    stages.update()

    t = time.perf_counter()
    db = pycolmap.Database.open(db_path)
    try:
        verified_pairs = int(db.num_verified_image_pairs())
        rec = pycolmap.Reconstruction()
        for name, i in zip(names, indices):
            im = db_images[name]
            rec.add_camera_with_trivial_rig(db.read_camera(im.camera_id))
            image = pycolmap.Image(name=name, camera_id=im.camera_id, image_id=im.image_id)
            rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(sfm_data.cameras[i].viewmat[:3, :4]))
    finally:
        db.close()
    sparse = work / "sparse"
    sparse.mkdir()
    rec = pycolmap.triangulate_points(rec, db_path, work / "images", sparse)
    rec.extract_colors_for_all_images(str(work / "images"))
    rec.write_binary(str(sparse))
    seconds["triangulation"] = time.perf_counter() - t
    stages.update()
    stages.close()

    ids = list(rec.points3D.keys())
    pts = rec.points3D
    xyz = np.array([pts[k].xyz for k in ids], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([pts[k].color for k in ids], dtype=np.float64).reshape(-1, 3) / 255.0
    err = np.array([pts[k].error for k in ids], dtype=np.float64)
    tracks = np.array([pts[k].track.length() for k in ids], dtype=np.int64)
    report = {
        "views": len(indices),
        "sfm_downscale": downscale,
        "image_size": [sfm_data.cameras[indices[0]].width, sfm_data.cameras[indices[0]].height],
        "keypoints": keypoints,
        "pairs": len(pairs),
        "verified_pairs": verified_pairs,
        "triangulated": len(xyz),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "config": asdict(cfg),
        "key": key,
        "pycolmap": pycolmap.__version__,
    }
    _write_points(work / "points.ply", xyz, rgb, err, tracks)
    atomic.write_json(work / REPORT, report)  # written last: marks the run finished
    return _filtered(SparseCloud(xyz, rgb, err, tracks, report), cfg, box)


def _filtered(cloud: SparseCloud, cfg: SfmConfig, box) -> SparseCloud:
    keep = (cloud.errors <= cfg.max_reprojection_error) & (cloud.track_lengths >= cfg.min_track_length)
    report = dict(cloud.report)
    report["dropped_error_or_track"] = int((~keep).sum())
    if box is not None:
        lo, hi = (np.asarray(b, dtype=np.float64) for b in box)
        inside = np.all((cloud.points >= lo) & (cloud.points <= hi), axis=1)
        report["dropped_outside_box"] = int((keep & ~inside).sum())
        keep &= inside
    report["points"] = int(keep.sum())
    report["mean_reprojection_error"] = float(cloud.errors[keep].mean()) if keep.any() else None
    report["median_track_length"] = float(np.median(cloud.track_lengths[keep])) if keep.any() else None
    return SparseCloud(cloud.points[keep], cloud.colors[keep], cloud.errors[keep], cloud.track_lengths[keep], report)


def _write_points(path: Path, xyz, rgb, err, tracks) -> None:
    from plyfile import PlyData, PlyElement

    rows = np.empty(len(xyz), dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("red", "u1"), ("green", "u1"),
                                     ("blue", "u1"), ("error", "f4"), ("track_length", "i4")])
    for k, name in enumerate("xyz"):
        rows[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        rows[name] = np.clip(np.round(rgb[:, k] * 255.0), 0, 255)
    rows["error"], rows["track_length"] = err, tracks
    atomic.write_with(path, lambda tmp: PlyData([PlyElement.describe(rows, "vertex")]).write(str(tmp)))


def _load_finished(work: Path, key: str, box) -> SparseCloud | None:
    from plyfile import PlyData

    report_path, ply_path = work / REPORT, work / "points.ply"
    if not (report_path.is_file() and ply_path.is_file()):
        return None
    try:
        report = json.loads(report_path.read_text())
        if report.get("key") != key:
            return None
        v = PlyData.read(str(ply_path))["vertex"].data
    except (OSError, ValueError, KeyError):
        return None  # damaged: redone from scratch by the caller
    xyz = np.stack([np.asarray(v[k], dtype=np.float64) for k in "xyz"], axis=1)
    rgb = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("red", "green", "blue")], axis=1) / 255.0
    cfg = SfmConfig(**report["config"])
    report["reused"] = True
    return _filtered(SparseCloud(xyz, rgb, np.asarray(v["error"], np.float64), np.asarray(v["track_length"], np.int64),
                                 report), cfg, box)


def _quiet_colmap(pycolmap) -> None:
    """COLMAP logs every image and pair on stderr, and warns about its own thread settings; keep
    errors only (failures surface as exceptions or as counts in the report)."""
    try:
        pycolmap.logging.minloglevel = 2
    except AttributeError:  # older bindings: their chatter is harmless
        pass


__all__ = ["SfmConfig", "SparseCloud", "sfm_downscale", "triangulate_dataset", "view_pairs"]
