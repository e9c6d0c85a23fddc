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

Second entry: `reconstruct_unposed(image_dir, work_dir, UnposedSfmConfig())` poses images nobody
posed (a video's frames, a photo folder; scene/capture.py prepares them): SIFT, sequential matching
with retrieved loop candidates or exhaustive matching, incremental mapping, the largest model
written as sparse/0. `pose_errors` scores poses against a reference after the similarity most views agree on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
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
    first_octave: int | None = None
    """SIFT's first octave. -1 (COLMAP's default) detects on the image upsampled 2x: on the fox at
    540x960 that took 4.7x the extraction time and 5x the matching time of 0 for 2.2x the
    points, which an initialisation does not need. None: 0 for images whose longest side is at
    least LARGE_SIFT_SIDE, -1 below (small views need the upsampling to find enough features)."""
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
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"
    pycolmap.extract_features(db_path, work / "images", image_names=names,
                              camera_mode=pycolmap.CameraMode.PER_IMAGE, reader_options=reader,
                              extraction_options=_extraction_options(pycolmap, cfg.max_features,
                                                                     first_octave(cfg, sfm_data, indices)))
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


LARGE_SIFT_SIDE = 800


def first_octave(cfg: SfmConfig, data, indices) -> int:
    """cfg.first_octave, or when None the automatic choice for these views' size."""
    if cfg.first_octave is not None:
        return cfg.first_octave
    side = max(max(data.cameras[i].width, data.cameras[i].height) for i in indices)
    return 0 if side >= LARGE_SIFT_SIDE else -1


def unposed_first_octave(cfg: "UnposedSfmConfig", n_images: int, longest_side: int) -> int:
    """cfg.first_octave, or when None the automatic choice for this set (UnposedSfmConfig.first_octave)."""
    if cfg.first_octave is not None:
        return cfg.first_octave
    if n_images <= cfg.small_set_max_images:
        return -1
    return 0 if longest_side >= LARGE_SIFT_SIDE else -1


EXIF_CAMERA_TAGS = {0x010F: "make", 0x0110: "model"}
EXIF_LENS_TAGS = {0x920A: "focal_length", 0xA405: "focal_length_35mm"}


def camera_groups(image_dir: Path, names: list[str]) -> list[tuple[tuple[int, int] | None, list[str]]]:
    """The photos that share one camera, in name order, each group with its (width, height): the same size
    and the same EXIF make, model and focal length (a phone's main and wide lenses, two people's phones, a
    zoom at two settings are different cameras, each with its own focal length and distortion to estimate).
    Photos without EXIF group by size. A file that is not an image joins the first group (size None when
    it is the first; COLMAP's reader names it when it fails to read it). Only the headers are read."""
    from PIL import Image

    groups: dict[tuple, list[str]] = {}
    for name in names:
        try:
            with Image.open(image_dir / name) as im:
                exif = im.getexif()
                lens = exif.get_ifd(0x8769)
                key = (im.size, *(str(exif.get(t, "")).strip("\x00 ") for t in EXIF_CAMERA_TAGS),
                       *(str(lens.get(t, exif.get(t, ""))) for t in EXIF_LENS_TAGS))
        except OSError:
            key = next(iter(groups), (None,))
        groups.setdefault(key, []).append(name)
    return [(key[0], group) for key, group in groups.items()]


def _extraction_options(pycolmap, max_features: int, first_octave: int = -1):
    """SIFT settings shared by both SfM entries: COLMAP's defaults with a feature budget."""
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.max_num_features = max_features
    extraction.sift.first_octave = first_octave
    return extraction


def _quiet_colmap(pycolmap) -> None:
    """COLMAP logs every image and pair on stderr, and warns about its own thread settings; keep
    errors only (failures surface as exceptions or as counts in the report)."""
    try:
        pycolmap.logging.minloglevel = 2
    except AttributeError:  # older bindings: their chatter is harmless
        pass



# ------------------------------------------------------------------------------ unposed images
UNPOSED_STATE = "sfm_state.json"


@dataclass
class UnposedSfmConfig:
    """Settings of full SfM on images without poses (a video's frames or a photo folder)."""

    max_features: int = 8192
    """SIFT features per image (COLMAP's default: unknown poses need every match they can get)."""
    first_octave: int | None = None
    """SIFT's first octave; None: 0 (the photo's own size) for sets of more than
    small_set_max_images photos whose longest side is at least LARGE_SIFT_SIDE, else -1 (upsampled
    2x, COLMAP's default). On the fox's 67 photos at 540x960, 0 found 1,277 keypoints a photo
    instead of 4,152 and posed all 67 as well (median rotation error 0.56 deg against 0.58) in
    35 s instead of 127; on lund's 29 street photos it kept 98 verified pairs of 217 and 417
    points of 1,595, hence the small-set rule (bench/README.md, "Unposed photos")."""
    small_set_max_images: int = 40
    """Sets up to this size keep SIFT's upsampling whatever their size: few photos need every
    match they can get, and exhaustive matching of few photos is cheap (it grows as the square)."""

    camera_model: str = "SIMPLE_RADIAL"
    """The camera model of every camera: one per group of photos of the same size and EXIF make, model and
    focal length (camera_groups; a video's frames are one camera). SIMPLE_RADIAL is COLMAP's default, and
    the dataset reader undistorts its k1 on load."""
    exhaustive_max: int = 100
    """Unordered photo sets up to this size match every pair; larger sets, and videos, match
    neighbours in order plus retrieved loop candidates."""
    overlap: int = 10
    """Sequential matching: each image with the next `overlap` images ..."""
    quadratic_overlap: bool = True
    """... and with those 2^k images further on (COLMAP's quadratic overlap)."""
    loop_candidates: int = 5
    """Per image, this many of the most similar images further away than the overlap (bag of
    visual words built from the images' own SIFT descriptors: no vocabulary download)."""
    min_posed_fraction: float = 0.5
    """Fewer posed images than this fraction (or than 3) is an error, not a dataset."""
    check_solves: int = 2
    """Repeat solves that check the registration: the same mapper on the same matches, other random seeds
    and (incremental) another starting image each. A view that a check places elsewhere is not trusted
    (report.json's sfm.trust; the run's report.html). 0: no check. Each costs about one more mapping."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_features < 64:
            raise ValueError(f"UnposedSfmConfig.max_features must be >= 64, got {self.max_features}")
        if self.overlap < 1:
            raise ValueError(f"UnposedSfmConfig.overlap must be >= 1, got {self.overlap}")
        if self.small_set_max_images < 0 or self.first_octave not in (None, -1, 0, 1, 2):
            raise ValueError("UnposedSfmConfig.small_set_max_images must be >= 0 and first_octave None or -1..2")
        if self.loop_candidates < 0 or self.exhaustive_max < 0 or self.check_solves < 0:
            raise ValueError("UnposedSfmConfig.loop_candidates, exhaustive_max and check_solves must be >= 0")
        if not 0.0 <= self.min_posed_fraction <= 1.0:
            raise ValueError(f"UnposedSfmConfig.min_posed_fraction must be in [0, 1], got {self.min_posed_fraction}")


def sequential_pairs(n: int, overlap: int, quadratic: bool = True) -> list[tuple[int, int]]:
    """Pairs (i < j) of an ordered sequence: j - i <= overlap, and j - i = 2^k when quadratic."""
    offsets = set(range(1, overlap + 1))
    if quadratic:
        offsets |= {1 << k for k in range(overlap)}
    return sorted((i, i + d) for d in offsets if d < n for i in range(n - d))


def retrieval_pairs(descriptors: list[np.ndarray], k: int, min_gap: int = 0, words: int = 256,
                    seed: int = 0) -> list[tuple[int, int]]:
    """Each image's `k` most similar others (|i - j| > min_gap) by tf-idf bags of visual words.

    The vocabulary is clustered (k-means) from the images' own descriptors, so loop candidates need
    no vocabulary tree download; a video of a hundred frames is clustered in about a second."""
    n = len(descriptors)
    if n < 2 or k <= 0:
        return []
    rng = np.random.default_rng(seed)
    sample = np.concatenate([d[rng.permutation(len(d))[:256]] for d in descriptors if len(d)]).astype(np.float32)
    words = int(min(words, max(2, len(sample) // 20)))
    if len(sample) < words:
        return []
    centres = sample[rng.choice(len(sample), words, replace=False)]
    for _ in range(10):  # Lloyd iterations: enough for retrieval, whose ranking is robust to the vocabulary
        assign = _nearest(sample, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, sample)
        counts = np.bincount(assign, minlength=words)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    hist = np.stack([np.bincount(_nearest(d.astype(np.float32), centres), minlength=words) if len(d)
                     else np.zeros(words, np.int64) for d in descriptors]).astype(np.float64)
    idf = np.log(n / np.maximum((hist > 0).sum(0), 1))
    tfidf = hist / np.maximum(hist.sum(1, keepdims=True), 1) * idf
    tfidf /= np.maximum(np.linalg.norm(tfidf, axis=1, keepdims=True), 1e-12)
    sim = tfidf @ tfidf.T
    idx = np.arange(n)
    sim[np.abs(idx[:, None] - idx[None]) <= min_gap] = -np.inf
    best = np.argsort(-sim, axis=1)[:, :k]
    return sorted({(min(i, int(j)), max(i, int(j))) for i in range(n) for j in best[i] if np.isfinite(sim[i, j])})


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for each row of x (chunked: bounded memory)."""
    c2 = (centres**2).sum(1)
    out = np.empty(len(x), np.int64)
    for a in range(0, len(x), 16384):
        out[a:a + 16384] = np.argmin(c2[None] - 2.0 * x[a:a + 16384] @ centres.T, axis=1)
    return out


def _unposed_key(names: list[str], image_dir: Path, cfg: UnposedSfmConfig, ordered: bool) -> str:
    digest = hashlib.sha256(json.dumps({"config": asdict(cfg), "ordered": ordered, "names": names}).encode())
    for name in names:
        digest.update(str((image_dir / name).stat().st_size).encode())
    return digest.hexdigest()


def reconstruct_unposed(image_dir, work_dir, cfg: UnposedSfmConfig | None = None, ordered: bool = False,
                        progress: bool = True, where=None) -> dict:
    """Poses and points for the images in `image_dir` by incremental SfM (pycolmap, CPU).

    `ordered` (a video's frames, in name order) matches each image with its neighbours in the
    sequence plus retrieved loop candidates; unordered sets up to cfg.exhaustive_max images match
    every pair. The largest reconstruction is written to work_dir/sparse/0 (COLMAP binary; beside
    an images/ folder it is a dataset fmsplat's COLMAP reader loads). COLMAP's database stays in
    work_dir/database.db with the stages done (sfm_state.json): a killed run redoes neither
    feature extraction nor the matching it finished. Returns the report: frames in, frames posed,
    points, mean reprojection error, seconds per stage. `where` names the source in errors.
    Raises DatasetError when fewer than cfg.min_posed_fraction of the images (or < 3) are posed."""
    import pycolmap

    cfg = cfg or UnposedSfmConfig()
    image_dir, work = Path(image_dir), Path(work_dir)
    where = where or image_dir
    names = sorted(p.name for p in image_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    n = len(names)
    if n < 3:
        raise DatasetError(f"{where}: structure from motion needs at least 3 images, got {n}")
    key = _unposed_key(names, image_dir, cfg, ordered)
    state_path, db_path = work / UNPOSED_STATE, work / "database.db"
    state = _read_json(state_path)
    if state.get("key") != key:  # other images or settings: the database cannot be trusted
        for stale in (db_path, state_path):
            stale.unlink(missing_ok=True)
        state = {"key": key, "seconds": {}}
    work.mkdir(parents=True, exist_ok=True)
    _quiet_colmap(pycolmap)
    reused = [stage for stage in ("features", "pairs", "matching") if state.get(stage)]

    def mark(stage: str, seconds: float, **extra) -> None:
        state[stage] = True
        state["seconds"][stage] = round(state["seconds"].get(stage, 0.0) + seconds, 2)
        state.update(extra)
        atomic.write_json(state_path, state)

    # Features, in batches: a progress bar, and a killed run keeps what is in the database (COLMAP
    # skips images it has). Later batches join the first batch's camera: one camera for all.
    if not state.get("features"):
        t = time.perf_counter()
        batch = max(4, -(-n // 20))
        groups = camera_groups(image_dir, names)
        octave = unposed_first_octave(cfg, n, max((max(size) for size, _ in groups if size), default=0))
        bar = tqdm(total=n, desc="features", unit="img", disable=not progress, dynamic_ncols=True)
        for _, group in groups:
            for a in range(0, len(group), batch):
                reader = pycolmap.ImageReaderOptions()
                reader.camera_model = cfg.camera_model
                camera_id = _camera_id_of(pycolmap, db_path, group)  # later batches join the group's camera
                if camera_id is not None:
                    reader.existing_camera_id = camera_id
                pycolmap.extract_features(db_path, image_dir, image_names=group[a:a + batch],
                                          camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                          extraction_options=_extraction_options(pycolmap, cfg.max_features, octave))
                bar.update(len(group[a:a + batch]))
        bar.close()
        mark("features", time.perf_counter() - t, first_octave=octave, camera_groups=len(groups))

    db = pycolmap.Database.open(db_path)
    try:
        images = {im.name: im for im in db.read_all_images()}
        missing = [name for name in names if name not in images]
        if missing:
            raise DatasetError(f"{where}: COLMAP could not read {len(missing)} of {n} images (first: {missing[0]})")
        keypoints = [int(db.num_keypoints_for_image(images[name].image_id)) for name in names]
        pairs_file = work / "pairs.txt"
        if not (state.get("pairs") and pairs_file.is_file()):
            t = time.perf_counter()
            if not ordered and n <= cfg.exhaustive_max:
                pairs, mode = [(i, j) for i in range(n) for j in range(i + 1, n)], "exhaustive"
            else:
                descriptors = [_descriptor_array(db.read_descriptors(images[name].image_id)) for name in names]
                overlap = cfg.overlap if ordered else cfg.overlap // 2
                loops = retrieval_pairs(descriptors, cfg.loop_candidates if ordered else 4 * cfg.loop_candidates,
                                        min_gap=overlap, seed=cfg.seed)
                pairs = sorted(set(sequential_pairs(n, overlap, cfg.quadratic_overlap and ordered)) | set(loops))
                mode = "sequential+loops" if ordered else "neighbours+retrieval"
            atomic.write_text(pairs_file, "".join(f"{names[a]} {names[b]}\n" for a, b in pairs))
            mark("pairs", time.perf_counter() - t, matching_mode=mode, num_pairs=len(pairs))
    finally:
        db.close()

    # Matching in chunks of the pair list, each chunk recorded when done (COLMAP also skips pairs
    # it has already matched). Few chunks: each call costs about a second of set-up.
    lines = pairs_file.read_text().splitlines(keepends=True)
    chunk = max(200, -(-len(lines) // 10))
    done = int(state.get("matched_pairs", 0))
    if not state.get("matching"):
        t = time.perf_counter()
        bar = tqdm(total=len(lines), initial=done, desc="matching", unit="pair", disable=not progress,
                   dynamic_ncols=True)
        for a in range(done, len(lines), chunk):
            chunk_file = work / "pairs_chunk.txt"
            chunk_file.write_text("".join(lines[a:a + chunk]))
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = chunk_file
            pycolmap.match_image_pairs(db_path, pairing_options=pairing)
            state["matched_pairs"] = min(len(lines), a + chunk)
            state["seconds"]["matching"] = round(state["seconds"].get("matching", 0.0) + time.perf_counter() - t, 2)
            t = time.perf_counter()
            atomic.write_json(state_path, state)
            bar.update(len(lines[a:a + chunk]))
        bar.close()
        (work / "pairs_chunk.txt").unlink(missing_ok=True)
        mark("matching", 0.0)

    t = time.perf_counter()
    options = pycolmap.IncrementalPipelineOptions()
    db = pycolmap.Database.open(db_path)
    try:  # pairs with a two-view geometry the mapper can use (the database also keeps failed ones)
        pair_ids, geometries = db.read_two_view_geometries()
        usable = [int(g.config) >= 2 and len(g.inlier_matches) >= options.min_num_matches for g in geometries]
        verified_pairs = sum(usable)
        ranked = ranked_pairs(pycolmap, pair_ids, geometries, usable)
        id_to_name = {int(im.image_id): im.name for im in db.read_all_images()}
        partners = Counter(id_to_name[int(image_id)] for pid, ok in zip(pair_ids, usable) if ok
                           for image_id in pycolmap.pair_id_to_image_pair(int(pid)))  # per image: usable pairs
    finally:
        db.close()
    min_model_size = int(min(options.min_model_size, max(3, n // 2)))  # small photo sets count too
    options = _incremental_options(pycolmap, cfg.seed, min_model_size)
    raw = work / "mapping"
    bar = tqdm(total=n, desc="mapping", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        models, error = _mapped(pycolmap, raw, lambda: pycolmap.incremental_mapping(
            db_path, image_dir, raw, options, initial_image_pair_callback=lambda: bar.update(2),
            next_image_callback=lambda: bar.update(1)))
    finally:
        bar.close()
    failure = f"; COLMAP: {error}" if error else ""  # COLMAP gave up (no image pair to start from): nothing posed
    best = _largest(models)
    posed = 0 if best is None else int(best.num_reg_images())
    needed = max(3, int(np.ceil(cfg.min_posed_fraction * n)))
    # Where incremental SfM cannot start (a forward walk: ../shared/data/lund, 2 of 29 incremental, 29 of 29
    # global, in order along the street), global SfM (COLMAP's GLOMAP: rotation averaging, then positions from
    # all pairs at once) on the same matches is the model.
    mapper = "incremental"
    if posed < needed:
        second = _global_solve(pycolmap, db_path, image_dir, raw, cfg.seed)
        if second is not None and int(second.num_reg_images()) > posed:
            if progress:
                tqdm.write(f"{where}: incremental SfM posed {posed} of {n}; global SfM posed "
                           f"{second.num_reg_images()}: kept")
            best, mapper = second, "global"
            posed, failure = int(best.num_reg_images()), ""
    mapping_seconds = time.perf_counter() - t
    t = time.perf_counter()
    trust = {"checks": 0, "note": "no model"}
    if posed >= needed:
        trust = check_registration(pycolmap, db_path, image_dir, raw, _world_to_camera(best), mapper, ranked, cfg,
                                   options.min_model_size, progress)
    checking_seconds = time.perf_counter() - t
    if posed < needed:
        raise DatasetError(
            f"{where}: {posed} of {n} frames posed: too little texture or motion (needs {needed}; pairs with a "
            f"geometry: {verified_pairs} of {len(lines)} matched{failure}). Try: more frames (--frames), a slower camera or more overlap "
            "between photos, a scene with more texture; the features and matches are kept for a rerun")
    t = time.perf_counter()
    model_dir = work / "sparse" / "0"
    shutil.rmtree(work / "sparse", ignore_errors=True)
    model_dir.mkdir(parents=True)
    best.write_binary(str(model_dir))
    writing_seconds = time.perf_counter() - t
    camera = next(iter(best.cameras.values()))
    posed_names = sorted(best.images[i].name for i in best.reg_image_ids())
    return {
        "frames_in": n,
        "frames_posed": posed,
        "not_posed": sorted(set(names) - set(posed_names)),
        "not_posed_why": {name: ("no other photo shares a verified geometry with it" if partners[name] == 0 else
                                 f"{partners[name]} verified pair(s), but too few of its matches reach the model's points")
                          for name in sorted(set(names) - set(posed_names))},
        "models": len(models),
        "points": int(best.num_points3D()),
        "mean_reprojection_error": float(best.compute_mean_reprojection_error()),
        "mean_track_length": float(best.compute_mean_track_length()),
        "keypoints_median": float(np.median(keypoints)),
        "first_octave": state.get("first_octave"),
        "matching": state.get("matching_mode"),
        "pairs": len(lines),
        "verified_pairs": verified_pairs,
        "camera": {"model": camera.model.name, "width": int(camera.width), "height": int(camera.height),
                   "params": [float(v) for v in camera.params]},
        "cameras": [{"camera_id": int(cid), "model": cam.model.name, "width": int(cam.width), "height": int(cam.height),
                     "params": [float(v) for v in cam.params],
                     "images": sum(1 for i in best.reg_image_ids() if best.images[i].camera_id == cid)}
                    for cid, cam in sorted(best.cameras.items())],
        "seconds": {**{k: state["seconds"].get(k, 0.0) for k in ("features", "pairs", "matching")},
                    "mapping": round(mapping_seconds, 2), "checking": round(checking_seconds, 2),
                    "writing": round(writing_seconds, 2)},
        "reused": reused,
        "mapper": mapper,
        "trust": trust,
        "config": asdict(cfg),
        "pycolmap": pycolmap.__version__,
    }


DISAGREE_DEG = 5.0  # a view whose solves differ by more than this rotation ...
DISAGREE_CENTRE = 0.05  # ... or centre (fraction of the path's diameter, after alignment) is not trusted


def _mapped(pycolmap, raw: Path, run) -> tuple[dict, str]:
    """COLMAP's models from `run()` (a mapper writing into the fresh folder `raw`, removed afterwards: only the
    models in memory are kept) and its error ("" when it ran), with COLMAP's own log quiet: "failed to create
    any sparse model" is for the caller to say."""
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    level = getattr(pycolmap.logging, "minloglevel", None)
    if level is not None:
        pycolmap.logging.minloglevel = 3
    try:
        return run(), ""
    except (RuntimeError, ValueError) as exc:  # no model at all
        return {}, str(exc)
    finally:
        if level is not None:
            pycolmap.logging.minloglevel = level
        shutil.rmtree(raw, ignore_errors=True)


def _largest(models: dict):
    return max(models.values(), key=lambda r: r.num_reg_images(), default=None)


def _incremental_options(pycolmap, seed: int, min_model_size: int, start: int | None = None):
    """COLMAP's incremental mapper settings with every random seed set; `start`: its first image (None: its choice)."""
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = seed
    options.mapper.random_seed = seed
    options.triangulation.random_seed = seed
    options.min_model_size = min_model_size
    if start is not None:
        options.init_image_id1 = int(start)
    return options


def _global_solve(pycolmap, db_path: Path, image_dir: Path, raw: Path, seed: int = 0):
    """The largest model of COLMAP's global mapper on the database's matches, or None."""
    options = pycolmap.GlobalPipelineOptions()
    options.random_seed = seed
    options.mapper.random_seed = seed
    return _largest(_mapped(pycolmap, raw, lambda: pycolmap.global_mapping(db_path, image_dir, raw, options))[0])


def _world_to_camera(rec) -> dict:
    out = {}
    for im in rec.images.values():
        if im.has_pose:
            m = np.eye(4)
            m[:3] = np.asarray(im.cam_from_world().matrix() if callable(im.cam_from_world) else im.cam_from_world.matrix())
            out[im.name] = m
    return out


def check_registration(pycolmap, db_path: Path, image_dir: Path, raw: Path, main: dict, mapper: str,
                        ranked: list[tuple[int, int]], cfg: UnposedSfmConfig, min_model_size: int,
                        progress: bool = False) -> dict:
    """Solve again cfg.check_solves times and name the views of `main` (world-to-camera poses by image name, the
    kept model) that a check places elsewhere. `ranked`: the verified pairs, most inliers first (ranked_pairs).

    A scene with repeated or duplicate structure (a box with the same picture on every face, a symmetric
    facade, tiled floors) gives verified two-view geometries that are wrong, and which of them the
    mapper believes depends on where it starts and on its random choices, while a sound capture is solved
    the same way from anywhere (bench/README.md, "Registrations a user can trust"). So each check is the
    same mapper with another seed and, for incremental SfM, another starting image (from a well-matched
    pair sharing no image with earlier starts, spread over the better half of the ranked pairs). A check that poses fewer than half the model's views says
    nothing (it started in a corner) and the next start is tried, at most twice as many as asked. Each
    valid check aligns to the model (pose_errors: the similarity most views agree on); a view it places
    more than DISAGREE_DEG or DISAGREE_CENTRE of the path away gets a vote; one vote and it is untrusted."""
    if cfg.check_solves == 0:
        return {"checks": 0, "note": "no check (check_solves = 0)"}
    votes = {name: 0 for name in main}
    solves, valid = [], 0
    starts: set[int] = set(ranked[0]) if ranked else set()  # the main solve began about there
    bar = tqdm(total=cfg.check_solves, desc="checking", unit="solve", disable=not progress, dynamic_ncols=True)
    for attempt in range(2 * cfg.check_solves):
        if valid == cfg.check_solves:
            break
        seed = cfg.seed + 1 + attempt
        start = None
        if mapper == "incremental":
            free = [pair for pair in ranked if not (set(pair) & starts)]
            if not free:
                break
            start = free[(attempt * len(free)) // (4 * cfg.check_solves)][0]
            starts.add(start)
            other = _incremental_solve(pycolmap, db_path, image_dir, raw, seed, min_model_size, start)
        else:
            other = _global_solve(pycolmap, db_path, image_dir, raw, seed)
        poses = {} if other is None else _world_to_camera(other)
        common = sorted(set(poses) & set(main))
        entry = {"seed": seed, "start": None if other is None or start is None else _image_name(other, start),
                 "posed": len(poses)}
        if len(common) < max(3, len(main) / 2):
            solves.append({**entry, "used": False})
            continue
        err = pose_errors(poses, main)
        disagree = [k for k, v in err["per_view"].items()
                    if v["rotation_deg"] > DISAGREE_DEG or v["center_error"] > DISAGREE_CENTRE]
        for k in disagree:
            votes[k] += 1
        valid += 1
        bar.update(1)
        solves.append({**entry, "used": True, "disagree": len(disagree),
                       "rotation_deg_median": round(err["rotation_deg_median"], 3)})
    bar.close()
    untrusted = sorted(k for k, v in votes.items() if v > 0)
    return {"checks": valid, "mapper": mapper, "solves": solves, "views": len(main),
            "untrusted": untrusted, "votes": {k: v for k, v in sorted(votes.items()) if v},
            "rule": f"untrusted: placed > {DISAGREE_DEG:g} deg or > {100 * DISAGREE_CENTRE:g} % of the path away by "
                    "any check solve"}


def ranked_pairs(pycolmap, pair_ids, geometries, usable=None) -> list[tuple[int, int]]:
    """Image-id pairs of the usable two-view geometries (Database.read_two_view_geometries), most inliers
    first: where check solves start."""
    usable = usable if usable is not None else [int(g.config) >= 2 for g in geometries]
    scored = sorted(((len(g.inlier_matches), int(pid)) for pid, g, ok in zip(pair_ids, geometries, usable) if ok),
                    reverse=True)
    return [tuple(int(i) for i in pycolmap.pair_id_to_image_pair(pid)) for _, pid in scored]


def trust_line(trust: dict) -> str:
    """One line for people on the registration check (empty when every view is trusted)."""
    bad = trust.get("untrusted") or []
    if not bad:
        return ""
    shown = ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")
    verdict = ("most of the registration is in doubt (repeated or duplicate structure?): "
               if len(bad) > trust["views"] / 3 else "")
    return (f"{verdict}{len(bad)} of {trust['views']} posed views are placed elsewhere by {trust['checks']} repeat "
            f"solve(s): {shown}; check their panels after training (report.json: sfm.trust)")


def _image_name(rec, image_id: int) -> str | None:
    return rec.images[image_id].name if image_id in rec.images else None


def _incremental_solve(pycolmap, db_path: Path, image_dir: Path, raw: Path, seed: int, min_model_size: int,
                       start: int | None = None):
    """The largest model of COLMAP's incremental mapper from image `start` (None: its own choice), or None
    (no start from there: the check says nothing)."""
    options = _incremental_options(pycolmap, seed, min_model_size, start)
    return _largest(_mapped(pycolmap, raw, lambda: pycolmap.incremental_mapping(db_path, image_dir, raw, options))[0])


def _camera_id_of(pycolmap, db_path: Path, group: list[str]) -> int | None:
    """The camera of the first photo of `group` already in the database (None: none is yet)."""
    if not db_path.is_file():
        return None
    db = pycolmap.Database.open(db_path)
    try:
        wanted = set(group)
        for im in db.read_all_images():
            if im.name in wanted:
                return int(im.camera_id)
        return None
    finally:
        db.close()


def _descriptor_array(descriptors) -> np.ndarray:
    """(n, 128) descriptors from what Database.read_descriptors returns (an array, or an object
    holding one in .data, depending on the pycolmap version)."""
    return np.asarray(getattr(descriptors, "data", descriptors)).reshape(-1, 128)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------ pose evaluation
def umeyama(src, dst, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (scale, R, t) with dst ≈ scale * R @ src + t (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or len(src) < 3:
        raise ValueError(f"umeyama: needs two (N>=3, D) arrays of one shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd(xd.T @ xs / len(src))
    S = np.ones(len(D))
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # a reflection is no rotation
        S[-1] = -1.0
    R = U @ np.diag(S) @ Vt
    var = (xs**2).sum() / len(src)
    scale = float((D * S).sum() / var) if with_scale else 1.0
    return scale, R, mu_d - scale * R @ mu_s


ALIGN_INLIER_DEG = 5.0  # pose_errors: views whose world rotation agrees within this define the alignment


def _rotation_angles(rel: np.ndarray) -> np.ndarray:
    """Angles (degrees) of a stack of rotation matrices (..., 3, 3)."""
    return np.degrees(np.arccos(np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)))


def _project_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def pose_errors(estimated: dict, truth: dict) -> dict:
    """Compare world-to-camera poses {name: (4, 4)} on the names both have: the estimate is brought onto the
    truth by a similarity, then per view the rotation error (degrees) and the centre error as a fraction of
    the diameter of the true centres (largest distance between two of them).

    The similarity is robust to a block of wrong views: its rotation is the one most views agree on (each
    view's truth-from-estimate world rotation; the medoid, then the chordal mean of the views within
    ALIGN_INLIER_DEG of it), and its scale and shift are fitted to those views' centres. A least-squares
    fit of the centres alone (Umeyama over every view) lets 15 flipped views of a ring of 48 tilt the other
    33 by 5 deg, and on a ring of cameras its rotation is ambiguous (turned 180 deg about a diameter, a
    ring is still the ring); `similarity` says which views defined it."""
    names = sorted(set(estimated) & set(truth))
    if len(names) < 3:
        raise ValueError(f"pose_errors: {len(names)} views in common, need at least 3")
    est = np.stack([np.asarray(estimated[k], np.float64) for k in names])
    tru = np.stack([np.asarray(truth[k], np.float64) for k in names])
    c_est = -np.einsum("nji,nj->ni", est[:, :3, :3], est[:, :3, 3])
    c_tru = -np.einsum("nji,nj->ni", tru[:, :3, :3], tru[:, :3, 3])
    # Each view's world rotation truth <- estimate: R_tru^T R_est (camera-to-world of the truth after the
    # estimate's world-to-camera); a right registration's all agree.
    world = np.einsum("nji,njk->nik", tru[:, :3, :3], est[:, :3, :3])
    flat = world.reshape(len(names), 9)  # trace(A^T B) is the dot product of the flattened matrices
    pair = np.degrees(np.arccos(np.clip((flat @ flat.T - 1.0) / 2.0, -1.0, 1.0)))  # (n, n) angles between guesses
    medoid = int(np.argmin(np.median(pair, axis=1)))
    inliers = pair[medoid] <= ALIGN_INLIER_DEG
    if inliers.sum() >= 3:
        R = _project_rotation(world[inliers].sum(0))
        src, dst = c_est[inliers] @ R.T, c_tru[inliers]
        mu_s, mu_d = src.mean(0), dst.mean(0)
        var = ((src - mu_s) ** 2).sum()
        scale = float(((src - mu_s) * (dst - mu_d)).sum() / var) if var > 0 else 1.0
        t = mu_d - scale * R @ (c_est[inliers].mean(0))
        used = "rotations"
    else:  # no three views agree on the world's rotation: the centres' least squares is all there is
        scale, R, t = umeyama(c_est, c_tru)
        used = "centres"
    aligned = scale * c_est @ R.T + t
    diameter = float(np.max(np.linalg.norm(c_tru[:, None] - c_tru[None], axis=-1)))
    centre_err = np.linalg.norm(aligned - c_tru, axis=1) / max(diameter, 1e-12)
    # Camera-to-world rotations: aligned estimate R @ R_est^T against R_tru^T.
    rel = np.einsum("nij,jk,nlk->nil", tru[:, :3, :3], R, est[:, :3, :3])
    rot_err = _rotation_angles(rel)
    return {
        "views": len(names),
        "rotation_deg_median": float(np.median(rot_err)),
        "rotation_deg_max": float(rot_err.max()),
        "center_error_median": float(np.median(centre_err)),
        "center_error_max": float(centre_err.max()),
        "diameter": diameter,
        "scale": scale,
        "similarity": {"from": used, "views": int(inliers.sum()) if used == "rotations" else len(names)},
        "per_view": {k: {"rotation_deg": float(r), "center_error": float(c)}
                     for k, r, c in zip(names, rot_err, centre_err)},
    }


def poses_from_transforms(path) -> dict[str, np.ndarray]:
    """World-to-camera poses (OpenCV) of a transforms.json by the stem of each frame's file_path
    (Windows separators allowed); the images themselves need not exist."""
    from fmsplat.scene.cameras import GL_TO_CV

    meta = json.loads(Path(path).read_text())
    out = {}
    for frame in meta["frames"]:
        stem = Path(str(frame["file_path"]).replace("\\", "/")).stem
        out[stem] = np.linalg.inv(np.asarray(frame["transform_matrix"], np.float64) @ GL_TO_CV)
    return out


def poses_from_colmap(model_dir) -> dict[str, np.ndarray]:
    """World-to-camera poses of a COLMAP model by image-name stem."""
    from fmsplat.scene.colmap import read_model

    model, _ = read_model(Path(model_dir))
    return {Path(im.name).stem: im.viewmat for im in model.images.values()}


__all__ = ["SfmConfig", "SparseCloud", "UnposedSfmConfig", "pose_errors", "poses_from_colmap",
           "poses_from_transforms", "reconstruct_unposed", "retrieval_pairs", "sequential_pairs", "sfm_downscale",
           "triangulate_dataset", "trust_line", "umeyama", "view_pairs", "check_registration", "ranked_pairs"]
