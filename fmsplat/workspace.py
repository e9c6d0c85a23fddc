"""The scene workspace: the one owner of a scene directory's files, their commits and their identity.

A trained scene is a directory (`fmsplat train DATA --out SCENE`); every stage after training adds to it:

    scene.json           config, provenance, versions; the identity of the Gaussians and of the dataset
    gaussians.ply        the trained Gaussians (any 3DGS viewer opens it)
    metrics.json         held-out and training PSNR / SSIM
    checkpoints/         the 3DGS trainer's resumable checkpoint
    report.html          one page on the training run (fmsplat.reconstruct.report)
    renders/ sfm/        pictures for people; points triangulated from the poses
    features/<key>/      cached extractor outputs (fmsplat.foundation.cache)
    memory/<key>.safetensors   M3 memory banks (one file each, written atomically)
    fields/<method>/     a fitted field: field.json (its manifest) + the files it names, checkpoint.pt
    queries/ eval/       answers and evaluation reports
    inventory/<method>/  what is in the scene (fmsplat inventory): JSON, pictures, PLY per object

`Workspace(root)` names those paths; `Workspace.open(root)` also reads scene.json, loads the dataset it
names and the Gaussians, and refuses (one line naming what differs) a dataset or a gaussians.ply other
than the ones the scene was trained on.

Multi-file artefacts (a field: tensors, config, maybe its own Gaussians) are committed as one unit by
`commit`: each file is written under a new versioned name, then the manifest naming them (with sizes and
SHA-256) is renamed into place last, then files no manifest names are removed. A kill at any instant
leaves the old manifest with its old files or the new one with its new files; `read_manifest` refuses a
manifest whose files are missing or differ from what it records.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from fmsplat import atomic
from fmsplat.errors import SceneError
from fmsplat.gaussians import GaussianModel
from fmsplat.scene import SceneDataset, load_dataset

SCENE_JSON = "scene.json"
GAUSSIANS_PLY = "gaussians.ply"
METRICS_JSON = "metrics.json"
FIELD_MANIFEST = "field.json"
CHECKPOINT = "checkpoint.pt"
# Everything a scene's stages write (removed by `clean`, i.e. train --overwrite); scene.json first, so
# that a kill mid-way leaves a folder that no longer claims to be a scene. data/ (a capture posed by
# `fmsplat train VIDEO`) is input, not output, and stays.
OUTPUTS = (SCENE_JSON, METRICS_JSON, GAUSSIANS_PLY, "report.html", "checkpoints", "renders", "sfm", "fields", "features", "memory",
           "queries", "eval", "inventory")
INPUTS = ("data",)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_identity(dataset: SceneDataset) -> dict:
    """What identifies the dataset a scene was trained on: its pose file's name and SHA-256 (poses, image
    names and intrinsics all live there) and its frame count."""
    prov = dataset.provenance()
    return {"pose_file": Path(prov["pose_file"]).name, "pose_sha256": prov["pose_sha256"], "frames": prov["frames"]}


class Workspace:
    """One scene directory: its paths, its opening, overwrite and clean, and its artefacts' commits."""

    def __init__(self, root) -> None:
        self.root = Path(root)
        self._meta: dict | None = None
        self._dataset: SceneDataset | None = None
        self._gaussians: GaussianModel | None = None

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -------------------------------------------------------------------------------------- paths
    @property
    def scene_json(self) -> Path:
        return self.root / SCENE_JSON

    @property
    def gaussians_ply(self) -> Path:
        return self.root / GAUSSIANS_PLY

    @property
    def metrics_json(self) -> Path:
        return self.root / METRICS_JSON

    @property
    def train_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "train.pt"

    @property
    def renders_dir(self) -> Path:
        return self.root / "renders"

    @property
    def sfm_dir(self) -> Path:
        return self.root / "sfm"

    @property
    def capture_dir(self) -> Path:
        """Where `fmsplat train VIDEO|PHOTOS --out SCENE` poses the capture (an input of the scene)."""
        return self.root / "data"

    @property
    def fields_dir(self) -> Path:
        return self.root / "fields"

    @property
    def queries_dir(self) -> Path:
        return self.root / "queries"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def inventory_dir(self, method: str) -> Path:
        return self.root / "inventory" / method

    def field_dir(self, method: str) -> Path:
        return self.fields_dir / method

    def field_checkpoint(self, method: str) -> Path:
        return self.field_dir(method) / CHECKPOINT

    def features_dir(self, key: str) -> Path:
        """The feature cache of one extractor (foundation.cache: a file per view and a manifest)."""
        return self.root / "features" / key

    def bank_path(self, key: str) -> Path:
        return self.root / "memory" / f"{key}.safetensors"

    # -------------------------------------------------------------------------------------- state
    def is_scene(self) -> bool:
        return self.scene_json.is_file()

    def check_writable(self) -> None:
        """Create the directory (and its parents) and write and remove a probe file in it, so that a run
        that could not save its result is refused before any work, not after it (permission bits alone
        say nothing to root or on a read-only mount)."""
        probe = self.root / f".fmsplat-write-test-{secrets.token_hex(4)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise SceneError(f"{self.root}: cannot write here ({err.strerror or err}); choose another --out") from None

    def existing_outputs(self) -> list[str]:
        """Names in the directory other than its inputs (what a new training would overwrite)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name not in INPUTS)

    def clean(self) -> None:
        """Remove every output of every stage (scene.json first); inputs (data/) stay."""
        for name in OUTPUTS:
            target = self.root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    def saved_methods(self) -> list[str]:
        """Methods with a committed field, newest first."""
        found = list(self.fields_dir.glob(f"*/{FIELD_MANIFEST}")) if self.fields_dir.is_dir() else []
        found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.parent.name for p in found]

    # -------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, root, data: str | None = None) -> "Workspace":
        """Open a trained scene: scene.json, the dataset it names (or `data`) at the trained downscale and
        split, and gaussians.ply, each checked against the identity scene.json records."""
        ws = cls(root)
        ws._meta = ws.read_meta()
        info = ws._meta.get("data") or {}
        path = data or info.get("path")
        if not path:
            raise SceneError(f"{ws.scene_json}: no data.path; pass the dataset explicitly")
        downscale, test_every = info.get("downscale", 1.0), info.get("test_every", 8)
        # test_every 0 holds nothing out (TrainConfig.test_every); a bool is not a number here
        if isinstance(downscale, bool) or not isinstance(downscale, (int, float)) or not 0 < downscale < 1e6:
            raise SceneError(f"{ws.scene_json}: data.downscale must be a number > 0, got {downscale!r}")
        if isinstance(test_every, bool) or not isinstance(test_every, int) or test_every < 0:
            raise SceneError(f"{ws.scene_json}: data.test_every must be a whole number >= 0, got {test_every!r}")
        dataset = load_dataset(path, downscale=downscale, test_every=test_every)
        ws._check_dataset(dataset, path)
        if not ws.gaussians_ply.is_file():
            raise SceneError(f"{ws.gaussians_ply}: missing; train the scene first (fmsplat train)")
        gaussians = GaussianModel.load_ply(ws.gaussians_ply)
        recorded = (ws._meta.get("identity") or {}).get("gaussians")
        if recorded is not None and gaussians.fingerprint() != recorded:
            raise SceneError(f"{ws.gaussians_ply}: not the Gaussians this scene was trained to (fingerprint "
                             f"{gaussians.fingerprint()}, scene.json records {recorded}); restore it or train again")
        ws._dataset, ws._gaussians = dataset, gaussians
        return ws

    def read_meta(self) -> dict:
        """scene.json, parsed; errors name the directory or the file and say what to do."""
        root = self.root
        if not self.scene_json.is_file():
            if root.is_dir() and ((root / "transforms.json").is_file() or (root / "sparse").is_dir()
                                  or (root / "cameras.bin").is_file() or (root / "cameras.txt").is_file()):
                raise SceneError(f"{root}: is a dataset, not a trained scene; train it first "
                                 f"(fmsplat train {root} --out SCENE) and pass SCENE")
            raise SceneError(f"{root}: no scene.json; train the scene first (fmsplat train DATA --out {root})")
        try:
            meta = json.loads(self.scene_json.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise SceneError(f"{self.scene_json}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise SceneError(f"{self.scene_json}: not a scene description (a JSON object)")
        return meta

    def _check_dataset(self, dataset: SceneDataset, path) -> None:
        """Refuse a dataset other than the one trained on (scene.json's identity, or for scenes written
        before it existed the pose file's SHA-256 in its provenance)."""
        recorded = (self._meta.get("identity") or {}).get("dataset")
        if recorded is None:
            sha = (self._meta.get("provenance") or {}).get("pose_sha256")
            if sha is None:
                return
            recorded = {"pose_sha256": sha}
        now = dataset_identity(dataset)
        diffs = [f"{k} {str(recorded[k])[:16]} -> {str(now[k])[:16]}" for k in recorded if k in now and now[k] != recorded[k]]
        if diffs:
            raise SceneError(f"{self.scene_json}: data.path {path} is not the dataset this scene was trained on "
                             f"({'; '.join(diffs)}); point data.path (or --data) at the original dataset")

    def _loaded(self, what: str):
        value = getattr(self, "_" + what)
        if value is None:
            raise SceneError(f"{self.root}: the workspace was not opened (Workspace.open) before reading its {what}")
        return value

    @property
    def meta(self) -> dict:
        return self._loaded("meta")

    @property
    def dataset(self) -> SceneDataset:
        return self._loaded("dataset")

    @property
    def gaussians(self) -> GaussianModel:
        return self._loaded("gaussians")

    @classmethod
    def of(cls, root, meta: dict, dataset: SceneDataset, gaussians: GaussianModel) -> "Workspace":
        """A workspace over data already in memory (benchmarks and tests that build a scene by hand)."""
        ws = cls(root)
        ws._meta, ws._dataset, ws._gaussians = meta, dataset, gaussians
        return ws

    def view_name(self, i: int) -> str:
        cam = self.dataset.cameras[i]
        return cam.name or f"view_{i:04d}"

    def background(self) -> tuple:
        """The background colour the scene was trained with (scene.json's train_config), black if unknown."""
        bg = (self.meta.get("train_config") or {}).get("background") or (0.0, 0.0, 0.0)
        return tuple(float(c) for c in bg)

    def identity(self) -> dict:
        """What an artefact of this scene records as made from: the Gaussians' fingerprint and the dataset's
        identity. scene.json's record when it has one (`open` checked gaussians.ply and the dataset against
        it), else computed from what is loaded."""
        meta = self._meta if self._meta is not None else self.read_meta()
        if meta.get("identity"):
            return meta["identity"]
        if self._gaussians is None or self._dataset is None:
            raise SceneError(f"{self.scene_json}: records no identity (trained by an older fmsplat); train again")
        return {"gaussians": self._gaussians.fingerprint(), "dataset": dataset_identity(self._dataset)}

    def check_made_from(self, where: Path, made_from: dict | None, what: str) -> None:
        """Refuse an artefact (at `where`) made from other Gaussians or another dataset than this scene's,
        naming what differs; `what` says how to make it again."""
        if not isinstance(made_from, dict):
            raise SceneError(f"{where}: records no scene identity (written by an older fmsplat); {what} again")
        mine = self.identity()
        if made_from.get("gaussians") != mine["gaussians"]:
            raise SceneError(f"{where}: made from other Gaussians than {self.gaussians_ply} (fingerprint "
                             f"{made_from.get('gaussians')}, the scene's is {mine['gaussians']}); {what} again")
        theirs, now = made_from.get("dataset") or {}, mine["dataset"]
        if theirs.get("pose_sha256") != now.get("pose_sha256"):
            raise SceneError(f"{where}: made from another dataset ({theirs.get('pose_file')} sha256 "
                             f"{str(theirs.get('pose_sha256'))[:16]}, the scene's {now.get('pose_file')} is "
                             f"{str(now.get('pose_sha256'))[:16]}); {what} again")

    # -------------------------------------------------------------------------------------- writing
    def write_scene(self, gaussians: GaussianModel, meta: dict, metrics: dict, dataset: SceneDataset) -> None:
        """Commit a trained scene: gaussians.ply and metrics.json, then scene.json (last: it names the
        Gaussians' fingerprint and the dataset, so a gaussians.ply from another run is refused on open)."""
        gaussians.save_ply(self.gaussians_ply)
        atomic.write_json(self.metrics_json, metrics)
        meta = {**meta, "identity": {"gaussians": gaussians.fingerprint(), "dataset": dataset_identity(dataset)}}
        atomic.write_json(self.scene_json, meta)
        self._meta, self._dataset, self._gaussians = meta, dataset, gaussians

    def commit(self, directory: Path, files: dict[str, tuple[str, Callable[[Path], None]]], meta: dict,
               manifest: str = FIELD_MANIFEST) -> Path:
        """Write a multi-file artefact into `directory` as one unit. `files`: role -> (suffix, writer(path));
        each is written as `<role>.<token><suffix>`, then `manifest` (JSON: `meta` plus "files": role ->
        name, bytes, sha256) replaces the old one in one rename, then files no manifest names are removed."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)
        entries = {}
        for role, (suffix, writer) in files.items():
            path = directory / f"{role}.{token}{suffix}"
            atomic.write_with(path, writer)
            entries[role] = {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        atomic.write_json(directory / manifest, {**meta, "files": entries})
        keep = {e["name"] for e in entries.values()} | {manifest}
        for p in directory.iterdir():
            # older versions of this artefact's files (the same roles); checkpoints and the rest stay
            if p.is_file() and p.name not in keep and any(p.name.startswith(f"{role}.") for role in files):
                p.unlink()
        return directory / manifest

    def read_manifest(self, directory: Path, manifest: str = FIELD_MANIFEST) -> tuple[dict, dict[str, Path]]:
        """(meta, role -> path) of a committed artefact, each file checked against the manifest's size and
        SHA-256; a missing or differing file is refused, naming it."""
        path = Path(directory) / manifest
        if not path.is_file():
            raise SceneError(f"{path}: missing (nothing committed here)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise SceneError(f"{path}: not valid JSON ({err})") from None
        files = meta.get("files") if isinstance(meta, dict) else None
        if not isinstance(files, dict):
            raise SceneError(f"{path}: names no files (written by an older fmsplat?); write it again")
        out = {}
        for role, entry in files.items():
            try:
                p = Path(directory) / os.path.basename(str(entry["name"]))
                size, sha = int(entry["bytes"]), str(entry["sha256"])
            except (KeyError, TypeError, ValueError):
                raise SceneError(f"{path}: file entry {role!r} is not {{name, bytes, sha256}}") from None
            if not p.is_file():
                raise SceneError(f"{p}: missing (named by {path.name})")
            if p.stat().st_size != size or sha256_file(p) != sha:
                raise SceneError(f"{p}: differs from what {path.name} records (changed or damaged since it was written)")
            out[role] = p
        return meta, out


__all__ = ["CHECKPOINT", "FIELD_MANIFEST", "GAUSSIANS_PLY", "METRICS_JSON", "OUTPUTS", "SCENE_JSON", "SceneError",
           "Workspace", "dataset_identity", "sha256_file"]
