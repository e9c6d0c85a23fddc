"""Your own capture in: a video or a folder of unposed photos becomes a posed COLMAP dataset.

`process_data(src, out)` (`fmsplat process-data`, named after nerfstudio's ns-process-data):

1. frames: from a video (PyAV), `frames` of them spread over its length, each the sharpest of its
   stretch, then dropped when blurred against the frames around it; or the photos of a folder
   (all one size). Resized to a maximum side; video rotation metadata and EXIF orientation honoured.
2. poses: incremental SfM with pycolmap (scene/sfm.py `reconstruct_unposed`).

Output folder (a COLMAP project, loaded by `load_dataset`): images/, sparse/0/ (cameras.bin,
images.bin, points3D.bin), database.db (features and matches), report.json. It is built in
`.<out>.partial` beside `out` and renamed into place when complete, so `out` is never half
written; a killed run resumes there (frames kept, features and finished matching not redone).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from fmsplat import atomic
from fmsplat.scene.errors import DatasetError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
REPORT = "report.json"
STATE = "capture_state.json"


class CaptureError(DatasetError):
    """A capture that cannot become a dataset; the message names the file and what to try."""


@dataclass
class CaptureConfig:
    frames: int = 100
    """Video: frames to keep, spread evenly over its length (fewer when some are blurred)."""
    max_size: int = 960
    """Longest image side given to SfM and stored in the dataset (larger images are shrunk)."""
    blur_ratio: float = 0.5
    """A chosen video frame whose sharpness (variance of the Laplacian) is below this fraction of
    the median over the frames around it is blurred and dropped."""
    blur_window: int = 5
    """The median is taken over this many target-frame spacings centred on the frame."""

    def __post_init__(self) -> None:
        if self.frames < 3:
            raise ValueError(f"--frames must be >= 3, got {self.frames}")
        if self.max_size < 64:
            raise ValueError(f"--max-size must be >= 64 pixels, got {self.max_size}")
        if not 0.0 <= self.blur_ratio < 1.0:
            raise ValueError(f"blur_ratio must be in [0, 1), got {self.blur_ratio}")
        if self.blur_window < 1:
            raise ValueError(f"blur_window must be >= 1, got {self.blur_window}")


def source_kind(path) -> str | None:
    """'video' for a video file, 'photos' for a folder that holds photos but is not a dataset
    (no transforms.json, no COLMAP model), else None (a dataset, or nothing we know)."""
    path = Path(path)
    if path.is_file():
        return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else None
    if not path.is_dir() or (path / "transforms.json").is_file():
        return None
    from fmsplat.scene.colmap import find_colmap_model

    if find_colmap_model(path) is not None:
        return None
    return "photos" if _photo_files(path) else None


def _photo_files(folder: Path) -> list[Path]:
    def natural(p: Path):  # IMG_2 before IMG_10, as people number their photos
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in PHOTO_EXTENSIONS), key=natural)


# ------------------------------------------------------------------------------------- video
def sharpness(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grayscale image (higher: sharper)."""
    g = np.asarray(gray, np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def blurred(scores: np.ndarray, picks: np.ndarray, window: int, ratio: float) -> np.ndarray:
    """(len(picks),) bool: the picked frames whose sharpness is below `ratio` x the median
    sharpness of all frames within `window` frames centred on them. Relative to the neighbours,
    because absolute sharpness depends on the scene (a textured wall vs. a sky), not only on blur."""
    from scipy.ndimage import median_filter

    window = max(3, int(window) | 1)  # odd, so the window is centred
    local = median_filter(np.asarray(scores, np.float64), size=window, mode="nearest")
    return np.asarray(scores)[picks] < ratio * local[picks]


def _output_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _open_video(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise CaptureError(f"{path}: cannot be decoded as a video ({exc}); is it a complete mp4/mov/webm/mkv "
                           "file? Re-export it or pass a folder of photos") from exc
    if not container.streams.video:
        container.close()
        raise CaptureError(f"{path}: has no video stream (an audio file?); pass a video or a folder of photos")
    return container


def _count_frames(path: Path) -> int:
    """Frames in the video: the container's count, else its packets (demuxed, not decoded)."""
    with _open_video(path) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except Exception as exc:  # av raises several error types on damaged data
            raise CaptureError(f"{path}: cannot be read to the end ({exc}); the file is damaged or incomplete") from exc


def extract_video_frames(video, out_dir, frames: int = 100, max_size: int = 960, blur_ratio: float = 0.5,
                         blur_window: int = 5, progress: bool = True) -> dict:
    """Write about `frames` frames of `video` to out_dir/frame_<index>.jpg (index: the frame's
    position in the video). The video is cut into `frames` equal stretches; each gives its
    sharpest frame, which is dropped if blurred (see `blurred`). Frames are rotated as the
    video's display matrix says and shrunk to `max_size`. Returns what was done (report.json)."""
    import av

    video, out_dir = Path(video), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = _count_frames(video)
    if total == 0:
        raise CaptureError(f"{video}: contains no video frames")
    target = min(frames, total)
    slot_of = np.minimum((np.arange(total) * target) // total, target - 1)  # stretch of each frame
    scores: list[float] = []
    picks = np.full(target, -1, np.int64)
    best = np.full(target, -np.inf)
    pending = None  # (slot, index, rgb) of the sharpest frame of the stretch being decoded
    written: list[int] = []
    rotation = 0
    size = None

    def flush() -> None:
        if pending is not None:
            slot, index, rgb = pending
            Image.fromarray(np.ascontiguousarray(np.rot90(rgb, rotation // 90))).save(
                out_dir / f"frame_{index:05d}.jpg", quality=95)
            picks[slot] = index
            written.append(index)

    with _open_video(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decoding is most of this stage
        bar = tqdm(total=total, desc="frames", unit="frame", disable=not progress, dynamic_ncols=True)
        try:
            for index, frame in enumerate(container.decode(stream)):
                if size is None:
                    # Display rotation: counter-clockwise degrees (PyAV's convention, as np.rot90's).
                    rotation = int(round((frame.rotation or 0) / 90.0)) % 4 * 90
                    size = _output_size(frame.width, frame.height, max_size)
                    small = _output_size(frame.width, frame.height, 480)
                slot = int(slot_of[min(index, total - 1)])
                # Sharpness on a small grayscale copy: cheap for every frame, and blur of a few
                # pixels at full size still shows there.
                score = sharpness(frame.to_ndarray(format="gray", width=small[0], height=small[1]))
                scores.append(score)
                if pending is not None and pending[0] != slot:
                    flush()
                    pending = None
                if score > best[slot]:
                    best[slot] = score
                    rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation="AREA")
                    pending = (slot, index, rgb)
                bar.update()
            flush()
        except av.error.FFmpegError as exc:
            raise CaptureError(f"{video}: cannot decode frame {len(scores)} ({exc}); the file is damaged") from exc
        finally:
            bar.close()
    if not scores:
        raise CaptureError(f"{video}: no frame could be decoded")
    scores_arr = np.asarray(scores)
    kept = picks[picks >= 0]
    window = blur_window * max(1, len(scores_arr) // target)
    drop = blurred(scores_arr, kept, window, blur_ratio)
    for index in kept[drop]:
        (out_dir / f"frame_{index:05d}.jpg").unlink()
    width, height = (size[1], size[0]) if rotation in (90, 270) else size
    return {
        "source": str(video.resolve()),
        "kind": "video",
        "frames_decoded": len(scores_arr),
        "frames_chosen": int(len(kept)),
        "blurred_dropped": [f"frame_{i:05d}.jpg" for i in kept[drop]],
        "frames_kept": int(len(kept) - drop.sum()),
        "rotation": rotation,
        "image_size": [int(width), int(height)],
    }


# ------------------------------------------------------------------------------------ photos
def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 swap the sides."""
    w, h = img.size
    return (h, w) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def import_photos(folder, out_dir, max_size: int = 960, progress: bool = True) -> dict:
    """Copy the photos of `folder` into out_dir, upright (EXIF orientation applied) and each shrunk to
    `max_size` on its longest side; photos already upright and small enough are copied byte for byte.
    Photos may differ in size (portrait and landscape shots, two phones): SfM gives each size and EXIF
    camera its own camera (sfm.camera_groups), and every later stage works per view."""
    folder, out_dir = Path(folder), Path(out_dir)
    files = _photo_files(folder)
    if not files:
        raise CaptureError(f"{folder}: no photos (looked for {', '.join(PHOTO_EXTENSIONS)})")
    sizes = {}
    for path in files:
        try:
            with Image.open(path) as img:
                sizes[path] = _oriented_size(img)
        except (OSError, ValueError) as exc:
            raise CaptureError(f"{path}: cannot be decoded as an image ({exc}); remove or replace it") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[Path, tuple[int, int]] = {}
    for path in tqdm(files, desc="photos", unit="img", disable=not progress, dynamic_ncols=True):
        target = out_dir / path.name
        out_w, out_h = _output_size(*sizes[path], max_size)
        try:
            with Image.open(path) as img:
                upright = img.getexif().get(0x0112, 1) == 1
                if upright and (out_w, out_h) == img.size and img.format in ("JPEG", "PNG") and img.mode == "RGB":
                    img.load()  # a truncated file fails here, named, rather than later inside COLMAP
                    shutil.copyfile(path, target)
                    written[path] = (out_w, out_h)
                    continue
                exif = img.getexif()
                img = ImageOps.exif_transpose(img).convert("RGB")
                if img.size != (out_w, out_h):
                    img = img.resize((out_w, out_h), Image.LANCZOS, reducing_gap=3.0)
                if 0x0112 in exif:
                    del exif[0x0112]  # the pixels are upright now
                if path.suffix.lower() in (".jpg", ".jpeg"):
                    # EXIF kept: COLMAP reads a focal length prior from it
                    img.save(target, quality=95, **({"exif": exif.tobytes()} if len(exif) else {}))
                else:
                    target = target.with_suffix(".png")
                    img.save(target)
                written[path] = (out_w, out_h)
        except (OSError, ValueError) as exc:
            raise CaptureError(f"{path}: cannot be decoded as an image ({exc}); remove or replace it") from exc
    photo_sizes, image_sizes = Counter(sizes.values()), Counter(written.values())
    (width, height), _ = photo_sizes.most_common(1)[0]
    return {"source": str(folder.resolve()), "kind": "photos", "photos": len(files),
            "photo_size": [width, height], "image_size": list(_output_size(width, height, max_size)),
            "photo_sizes": {f"{w}x{h}": c for (w, h), c in photo_sizes.most_common()},
            "image_sizes": {f"{w}x{h}": c for (w, h), c in image_sizes.most_common()}}


# ------------------------------------------------------------------------------------ dataset
def _source_key(src: Path, kind: str, cfg: CaptureConfig, sfm_cfg) -> str:
    files = [src] if kind == "video" else _photo_files(src)
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps({"kind": kind, "files": stats, "capture": asdict(cfg), "sfm": asdict(sfm_cfg)})
    return hashlib.sha256(blob.encode()).hexdigest()


def finished_report(out) -> dict | None:
    """The report of a complete dataset written by process_data, else None."""
    try:
        return json.loads((Path(out) / REPORT).read_text())
    except (OSError, ValueError):
        return None


def process_data(src, out, cfg: CaptureConfig | None = None, sfm_cfg=None, overwrite: bool = False,
                 progress: bool = True) -> dict:
    """Turn a video file or a photo folder `src` into a posed dataset in `out` and return its
    report (also out/report.json). An `out` written earlier from the same source and settings is
    reused; another existing `out` is an error unless `overwrite`."""
    from fmsplat.scene.sfm import UnposedSfmConfig, reconstruct_unposed

    cfg = cfg or CaptureConfig()
    sfm_cfg = sfm_cfg or UnposedSfmConfig()
    src, out = Path(src), Path(out)
    if not src.exists():
        raise CaptureError(f"{src}: does not exist (expected a video file or a folder of photos)")
    kind = source_kind(src)
    if kind is None:
        if src.is_file():
            raise CaptureError(f"{src}: not a video ({', '.join(VIDEO_EXTENSIONS)}); pass a video file or a folder of photos")
        raise CaptureError(f"{src}: no photos found (looked for {', '.join(PHOTO_EXTENSIONS)}), or it is already a "
                           "dataset (transforms.json or a COLMAP model): train on it directly")
    key = _source_key(src, kind, cfg, sfm_cfg)
    done = finished_report(out)
    if done is not None and done.get("key") == key:
        done["reused"] = True
        return done
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists and was not made from {src} with these settings; "
                              "pass --overwrite to replace it")
    work = out.parent / f".{out.name}.partial"
    state = {}
    try:
        state = json.loads((work / STATE).read_text())
    except (OSError, ValueError):
        pass
    if state.get("key") != key:  # another source or settings: start this folder afresh
        shutil.rmtree(work, ignore_errors=True)
        state = {"key": key}
    work.mkdir(parents=True, exist_ok=True)

    if "frames" not in state:
        t = time.perf_counter()
        shutil.rmtree(work / "images", ignore_errors=True)
        if kind == "video":
            info = extract_video_frames(src, work / "images", cfg.frames, cfg.max_size, cfg.blur_ratio,
                                        cfg.blur_window, progress)
        else:
            info = import_photos(src, work / "images", cfg.max_size, progress)
        info["seconds"] = round(time.perf_counter() - t, 2)
        state["frames"] = info
        atomic.write_json(work / STATE, state)
    sfm = reconstruct_unposed(work / "images", work, sfm_cfg, ordered=kind == "video", progress=progress, where=src)
    report = {
        "source": str(src.resolve()),
        "kind": kind,
        "frames_in": sfm["frames_in"],
        "frames_posed": sfm["frames_posed"],
        "points": sfm["points"],
        "mean_reprojection_error": sfm["mean_reprojection_error"],
        "seconds": {"frames": state["frames"]["seconds"], **sfm["seconds"]},
        "capture": state["frames"],
        "sfm": sfm,
        "config": asdict(cfg),
        "key": key,
    }
    atomic.write_json(work / REPORT, report)
    _replace_dir(work, out)
    return report


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename the complete folder `src` onto `dst`; an existing `dst` is moved aside first, so
    a crash leaves the old or the new folder, never a mix."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def summary(report: dict) -> str:
    """One line for people: frames posed, points, error and time per stage."""
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items() if v >= 0.5)
    reused = " (reused)" if report.get("reused") else ""
    line = (f"{report['frames_posed']} of {report['frames_in']} frames posed, {report['points']:,} points, "
            f"reprojection error {report['mean_reprojection_error']:.2f} px; {secs}{reused}")
    from fmsplat.scene.sfm import trust_line

    doubt = trust_line((report.get("sfm") or {}).get("trust") or {})
    if doubt:
        line += f"\nnot trusted: {doubt}"
    why = (report.get("sfm") or {}).get("not_posed_why") or {}
    if why:
        shown = "; ".join(f"{name}: {reason}" for name, reason in list(why.items())[:5])
        line += f"\nnot posed: {shown}" + (f"; and {len(why) - 5} more (report.json)" if len(why) > 5 else "")
    return line


__all__ = ["CaptureConfig", "CaptureError", "PHOTO_EXTENSIONS", "VIDEO_EXTENSIONS", "blurred", "extract_video_frames",
           "finished_report", "import_photos", "process_data", "sharpness", "source_kind", "summary"]
