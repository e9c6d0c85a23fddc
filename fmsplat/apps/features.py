"""`fmsplat features SCENE --model NAME`: extract and cache dense features of every view of a scene."""

from __future__ import annotations

import time
from pathlib import Path

from fmsplat.errors import SceneError, UserInputError
from fmsplat.foundation.registry import parse_options  # noqa: F401 (the CLI reads --model options with it)
from fmsplat.workspace import Workspace


def resolve_data(scene_dir: Path, data: str | None, downscale: float | None) -> tuple[str, float]:
    """Dataset path and downscale: explicit options win, else the scene's scene.json `data` block."""
    ws = Workspace(scene_dir)
    scene_json = ws.scene_json
    recorded: dict = {}
    if ws.is_scene():
        try:
            recorded = ws.read_meta().get("data") or {}
        except SceneError as err:
            raise UserInputError(str(err)) from None
    path = data or recorded.get("path")
    if not path:
        where = f"{scene_json} has no data.path" if scene_json.is_file() else f"{scene_dir} has no scene.json"
        raise UserInputError(f"{where}: pass the dataset with --data")
    scale = downscale if downscale is not None else float(recorded.get("downscale", 1.0))
    return str(path), scale


def run_features(
    scene: str,
    data: str | None,
    downscale: float | None,
    model: str,
    pyramid: bool,
    options: dict | None = None,
    progress: bool = True,
    threads: int = 0,
    ray: str | None = None,
    workers: int | None = None,
) -> dict:
    """Extract features for all views (training and held-out) into SCENE/features/<key>/; returns a summary."""
    from fmsplat.foundation.cache import extract_features
    from fmsplat.foundation.registry import get_extractor
    from fmsplat.scene import load_dataset

    import torch

    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads:
        # torch's intra-op pool spins between many small ops; on a shared CPU fewer threads win
        torch.set_num_threads(threads)
    scene_dir = Path(scene)
    path, scale = resolve_data(scene_dir, data, downscale)
    dataset = load_dataset(path, downscale=scale)
    extractor = get_extractor(model, pyramid=pyramid, **(options or {}))
    start = time.perf_counter()
    from fmsplat.parallel import resolve_address

    cache = extract_features(dataset, extractor, scene_dir, progress=progress, ray=resolve_address(ray), workers=workers)
    return {
        "folder": str(cache.root),
        "key": cache.key,
        "dim": cache.dim,
        "views": len(cache.views),
        "grid": cache.manifest["grid"],
        "seconds": round(time.perf_counter() - start, 2),
    }
