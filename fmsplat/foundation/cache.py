"""On-disk feature cache: ``<scene>/features/<extractor key>/``.

Layout: one fp16 safetensors file per view (tensor "features", shape (D, h, w)) and
``manifest.json`` = {format, key, dim, dtype, grid (when all views agree), views: {name: {file,
grid, bytes, sha256}}}. Every file goes through fmsplat.atomic (temp file + rename), the view file
before its manifest entry, and the manifest is rewritten after every view: a killed run loses at
most the view in flight and the next run continues from there. A view is used only when its file
has the recorded size and SHA-256; anything else (truncated, corrupted, missing, unlisted) is
recomputed, never read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fmsplat import atomic
from fmsplat.errors import FmsplatError
from fmsplat.workspace import Workspace

MANIFEST = "manifest.json"
FORMAT = 1
_VERIFIED: set[tuple] = set()  # (path, sha256, view, size, mtime, inode) of files hashed and found intact here


class CacheError(FmsplatError, RuntimeError):
    """A feature cache that cannot be used (wrong extractor, unreadable manifest, invalid view)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def view_filename(name: str) -> str:
    """Filesystem-safe, collision-free file name for a view name (which may hold '/' or spaces)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or "view"
    return f"{stem}.{hashlib.sha1(name.encode()).hexdigest()[:8]}.safetensors"


class FeatureCache:
    """Cached dense features of one extractor for the views of one scene directory."""

    def __init__(self, scene_dir, extractor) -> None:
        self.scene_dir = Path(scene_dir)
        self.extractor = extractor
        self.key = str(extractor.key)
        self.dim = int(extractor.dim)
        if not self.key or "/" in self.key or self.key in (".", ".."):
            raise CacheError(f"extractor key '{self.key}' is not a usable folder name")
        self.root = Workspace(self.scene_dir).features_dir(self.key)
        self.manifest_path = self.root / MANIFEST
        self.manifest = self._read_manifest()

    # -- manifest
    def _read_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"format": FORMAT, "key": self.key, "dim": self.dim, "dtype": "float16", "grid": None, "views": {}}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise CacheError(f"{self.manifest_path}: unreadable manifest ({err}); delete {self.root} to rebuild it") from err
        if not isinstance(manifest, dict):
            raise CacheError(f"{self.manifest_path}: not a manifest (a JSON object); delete {self.root} to rebuild it")
        if manifest.get("key") != self.key or manifest.get("dim") != self.dim:
            raise CacheError(
                f"{self.manifest_path}: holds features of key={manifest.get('key')!r} dim={manifest.get('dim')}, "
                f"not of this extractor (key={self.key!r} dim={self.dim}); delete {self.root} to rebuild it"
            )
        if not isinstance(manifest.get("views"), dict):
            raise CacheError(f"{self.manifest_path}: no 'views' table; delete {self.root} to rebuild it")
        return manifest

    def _write_manifest(self) -> None:
        grids = {tuple(v["grid"]) for v in self.manifest["views"].values()
                 if isinstance(v, dict) and isinstance(v.get("grid"), list)}
        self.manifest["grid"] = list(grids.pop()) if len(grids) == 1 else None
        atomic.write_json(self.manifest_path, self.manifest)

    # -- views
    @property
    def views(self) -> list[str]:
        return list(self.manifest["views"])

    def problem(self, name: str) -> str | None:
        """Why view `name` cannot be used (None when its file is complete and intact). A file verified once
        in this process is not hashed again while its size and modification time stay the same."""
        entry = self.manifest["views"].get(name)
        if entry is None:
            return "not in the manifest"
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bytes"), int) and isinstance(entry.get("grid"), list)):
            return f"its manifest entry in {self.manifest_path} is malformed"
        if entry["file"] != view_filename(name):
            # Each view has its own file name; another view's file here is a swapped or edited entry.
            return f"its manifest entry points at {entry['file']}, which is not this view's file ({view_filename(name)})"
        path = self.root / entry["file"]
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{path} has {size} bytes, the manifest records {entry['bytes']} (truncated or overwritten)"
        stat = path.stat()
        stamp = (str(path), entry["sha256"], name, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if stamp in _VERIFIED:
            return None
        if _sha256(path) != entry["sha256"]:
            return f"{path} does not match its recorded SHA-256 (corrupted)"
        owner = _stored_view(path)
        if owner != name:
            return f"{path} holds the features of view {owner!r}, not of this view (swapped)"
        _VERIFIED.add(stamp)
        return None

    def has(self, name: str) -> bool:
        return self.problem(name) is None

    def get(self, name: str) -> torch.Tensor:
        """(D, h, w) float32 features of view `name`; CacheError when absent or damaged."""
        from safetensors.torch import load_file

        why = self.problem(name)
        if why is not None:
            raise CacheError(f"features of view '{name}' ({self.key}) are not usable: {why}")
        path = self.root / self.manifest["views"][name]["file"]
        try:
            feats = load_file(str(path))["features"]
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise CacheError(f"{path}: unreadable feature file ({err}); delete it to recompute") from err
        if feats.ndim != 3 or feats.shape[0] != self.dim:
            raise CacheError(f"{path}: features of shape {tuple(feats.shape)}, expected ({self.dim}, h, w); delete it to recompute")
        if not bool(torch.isfinite(feats).all()):  # put() never writes these: the file was changed since
            raise CacheError(f"{path}: {int((~torch.isfinite(feats)).sum())} non-finite feature value(s); delete it to recompute")
        return feats.float()

    def put(self, name: str, features: torch.Tensor, image_size: tuple[int, int] | None = None) -> None:
        """Store (D, h, w) features of one view (as fp16) and record it in the manifest."""
        from safetensors.torch import save_file

        if features.ndim != 3 or features.shape[0] != self.dim:
            raise ValueError(f"features of view '{name}' must be ({self.dim}, h, w), got {tuple(features.shape)}")
        half = features.detach().to("cpu", torch.float16).contiguous()
        if not torch.isfinite(half).all():
            raise ValueError(f"features of view '{name}' are not finite in fp16 (overflow or NaN); refusing to cache them")
        fname = view_filename(name)
        path = self.root / fname
        meta = {"key": self.key, "view": name}
        atomic.write_with(path, lambda tmp: save_file({"features": half}, str(tmp), metadata=meta))
        entry = {"file": fname, "grid": list(half.shape[1:]), "bytes": path.stat().st_size, "sha256": _sha256(path)}
        if image_size is not None:
            entry["image_size"] = [int(image_size[0]), int(image_size[1])]
        self.manifest["views"][name] = entry
        self._write_manifest()

    def get_or_compute(self, name: str, image) -> torch.Tensor:
        if not self.has(name):
            self.put(name, self.extractor.encode_images(image)[0], _image_size(image))
        return self.get(name)


class _Key:
    """What FeatureCache needs of an extractor to read its cache: the key and the dimension."""

    def __init__(self, key: str, dim: int) -> None:
        self.key, self.dim = key, dim


class CachedMaps(Sequence):
    """The cached maps of some views as a lazy, picklable sequence: item k is read (and verified) from disk
    when asked for, as float32 (D, h, w), and not kept. Fitting that streams views through it holds one
    view at a time, whatever their number; a Ray worker given it reads the same files."""

    def __init__(self, cache: FeatureCache, names: Sequence[str]) -> None:
        self.scene_dir, self.key, self.dim = cache.scene_dir, cache.key, cache.dim
        self.names = list(names)
        missing = [n for n in self.names if not cache.has(n)]
        if missing:
            raise CacheError(f"{cache.root}: no usable features for {len(missing)} view(s), e.g. '{missing[0]}': "
                             f"{cache.problem(missing[0])}")
        self._cache: FeatureCache | None = cache

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if self._cache is None:
            self._cache = FeatureCache(self.scene_dir, _Key(self.key, self.dim))
        return self._cache.get(self.names[k])


def _stored_view(path: Path) -> str | None:
    """The view name recorded inside a cached feature file (None when unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("view")
    except Exception:  # a damaged header: the caller treats the file as not usable
        return None


def _image_size(image) -> tuple[int, int]:
    shape = tuple(image.shape)
    return (shape[-2], shape[-1]) if shape[-3] == 3 else (shape[-3], shape[-2])


def _views(source, names: Sequence[str] | None):
    """(name, loader) pairs from a SceneDataset, a mapping name -> image, or a sequence of images."""
    if hasattr(source, "cameras") and hasattr(source, "image"):
        cams = source.cameras
        vnames = [c.name or f"view_{i:04d}" for i, c in enumerate(cams)]
        if len(set(vnames)) != len(vnames):
            raise ValueError("dataset views have duplicate names; the cache needs unique names")
        return [(n, (lambda i=i: source.image(i))) for i, n in enumerate(vnames)]
    if isinstance(source, Mapping):  # name -> image, or name -> a callable loading it (read when encoded)
        return [(str(k), (v if callable(v) else (lambda v=v: v))) for k, v in source.items()]
    if isinstance(source, (torch.Tensor, np.ndarray)) and source.ndim == 3:
        source = [source]
    items = list(source)
    vnames = list(names) if names is not None else [f"view_{i:04d}" for i in range(len(items))]
    if len(vnames) != len(items) or len(set(vnames)) != len(vnames):
        raise ValueError(f"need {len(items)} unique view names, got {len(vnames)} ({len(set(vnames))} unique)")
    return [(n, (lambda v=v: v)) for n, v in zip(vnames, items)]


class _Encoder:
    """A Ray worker of extract_features: one extractor per worker process."""

    def __init__(self, extractor) -> None:
        self.extractor = extractor

    def encode(self, image) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.extractor.encode_images(image)[0].to(torch.float16), _image_size(image)


def extract_features(source, extractor, scene_dir, progress: bool = True, names: Sequence[str] | None = None,
                     ray: str | None = None, workers: int | None = None) -> FeatureCache:
    """Encode every view not yet validly cached and store it; returns the FeatureCache.

    source: a SceneDataset (views named by camera name), a mapping name -> image (or -> a callable
    returning it, called when the view is encoded), or a sequence /
    batch of images (named `names`, default view_0000, view_0001, ...). Images are float in [0, 1],
    (H, W, 3) or (3, H, W). Views already cached and intact are skipped, so a killed run resumes.
    `ray`: a cluster address (fmsplat.parallel; "local" starts one): views are encoded by `workers`
    Ray actors, each holding the extractor, and written here as each finishes (the cache is the
    checkpoint of a distributed run too).
    """
    from tqdm.auto import tqdm

    cache = FeatureCache(scene_dir, extractor)
    todo = [(n, load) for n, load in _views(source, names) if not cache.has(n)]
    desc = f"features {cache.key}"
    if ray is not None and todo:
        from fmsplat.parallel import map_views

        def store(i: int, result) -> None:
            cache.put(todo[i][0], result[0], result[1])

        map_views(lambda e=extractor: _Encoder(e), "encode", [load for _, load in todo], store, address=ray,
                  workers=workers, progress=progress, desc=desc, lazy=True)
        return cache
    for name, load in tqdm(todo, desc=desc, unit="view", disable=not progress):
        image = load()
        cache.put(name, extractor.encode_images(image)[0], _image_size(image))
    return cache
