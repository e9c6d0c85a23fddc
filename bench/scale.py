"""Past one machine: per-view stages on Ray, and memory that does not grow with the number of views.

    python bench/scale.py SCENE [--views 63,500,2000] [--workers 1,2]

SCENE is a trained scene with cached effnet and effnet-mid features (e.g. `fmsplat demo`'s work/scene).

Table 1, the per-view stages on this machine: effnet feature extraction of every view and `fit
--method lift` (effnet + effnet-mid), each in a fresh process, on the local path and on a local Ray
cluster of 1 and 2 workers (fmsplat.parallel). Wall seconds include starting the cluster; `driver
peak MiB` is the peak RSS of the process that gathers the results (the workers are separate
processes: each holds one model and one view at a time).

Table 2, peak memory against the number of views: the lifting stage alone (PCA of the teacher maps
plus one adjoint pass per view) over N synthetic views (the scene's training cameras and cached maps
repeated, as a long capture would add views), each N in a fresh process: streaming from the feature
cache (CachedMaps, what `fit --method lift` does) against holding every view's maps in memory (what
the trained methods' `bundle.targets` does).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
MODELS = ["effnet", "effnet-mid"]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_stage(scene: Path, stage: str, ray: str | None, workers: int | None) -> dict:
    from fmsplat.fields import fit_field

    from fmsplat.foundation.cache import extract_features
    from fmsplat.foundation.registry import get_extractor

    t = time.perf_counter()
    if stage == "features":
        from fmsplat.workspace import Workspace
        bundle = Workspace.open(scene)
        extract_features(bundle.dataset, get_extractor("effnet"), scene, progress=False, ray=ray, workers=workers)
    else:
        opts = {"ray": ray, "workers": workers} if ray else {}
        fit_field(scene, "lift", models=MODELS, progress=False, **opts)
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib()}


def child_views(scene: Path, cache_root: Path, n: int, mode: str) -> dict:
    """Lift over n synthetic views whose maps are in `cache_root` (written by `synthetic_cache`)."""
    import types
    from fmsplat.fields.base import parse_spaces
    from fmsplat.fields.distill import pca_basis
    from fmsplat.fields.lift import lift_spaces
    from fmsplat.foundation.cache import CachedMaps, FeatureCache

    from fmsplat.workspace import Workspace
    bundle = Workspace.open(scene)
    cams = [bundle.dataset.cameras[i] for i in bundle.dataset.train_indices]
    cameras = [cams[k % len(cams)] for k in range(n)]
    names = [f"syn_{k:05d}" for k in range(n)]
    targets = {}
    for spec in parse_spaces(MODELS, MODELS, "lift"):
        maps = CachedMaps(FeatureCache(cache_root, spec.extractor()), names)
        targets[spec.alias] = maps if mode == "stream" else [maps[k] for k in range(n)]
    fake = types.SimpleNamespace(dataset=types.SimpleNamespace(cameras=cameras, train_indices=list(range(n))),
                                 gaussians=bundle.gaussians)
    t = time.perf_counter()
    bases = {a: pca_basis(m, 32) for a, m in targets.items()}
    bases = {a: (w, b) for a, (w, b) in bases.items()}
    lift_spaces(fake, targets, bases, 0.25, progress=False)
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib()}


def synthetic_cache(scene: Path, root: Path, n: int) -> None:
    """root/features/<key>/ with n views syn_00000.. whose maps repeat the scene's training maps."""
    from safetensors.torch import load_file, save_file
    from fmsplat.fields.base import parse_spaces
    from fmsplat.foundation.cache import FeatureCache, _sha256, view_filename

    from fmsplat.workspace import Workspace
    bundle = Workspace.open(scene)
    for spec in parse_spaces(MODELS, MODELS, "lift"):
        src = FeatureCache(scene, spec.extractor())
        dst = FeatureCache(root, spec.extractor())
        train = [bundle.view_name(i) for i in bundle.dataset.train_indices]
        dst.root.mkdir(parents=True, exist_ok=True)
        have = len(dst.views)
        for k in range(have, n):  # as FeatureCache.put writes them, the manifest once at the end
            name, src_name = f"syn_{k:05d}", train[k % len(train)]
            fname = view_filename(name)
            half = load_file(str(src.root / src.manifest["views"][src_name]["file"]))["features"]
            save_file({"features": half}, str(dst.root / fname), metadata={"key": dst.key, "view": name})
            dst.manifest["views"][name] = {"file": fname, "grid": list(half.shape[1:]),
                                           "bytes": (dst.root / fname).stat().st_size,
                                           "sha256": _sha256(dst.root / fname)}
        dst._write_manifest()


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", type=Path, nargs="?")
    ap.add_argument("--views", default="63,500,2000", help="synthetic view counts of table 2")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts of table 1")
    ap.add_argument("--skip-stages", action="store_true", help="table 2 only")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "stage":
            scene, stage, ray, workers = rest
            res = child_stage(Path(scene), stage, None if ray == "-" else ray, int(workers) or None)
        else:
            scene, root, n, mode = rest
            res = child_views(Path(scene), Path(root), int(n), mode)
        print(json.dumps(res))
        return
    scene = args.scene.resolve()
    if not args.skip_stages:
        print("| stage | path | workers | wall s | driver peak MiB |\n|---|---|---|---|---|")
        work = Path(tempfile.mkdtemp(prefix="fmsplat-scale-"))
        try:
            for stage in ("features", "lift"):
                for ray, workers in [("-", 0)] + [("local", int(w)) for w in args.workers.split(",")]:
                    copy = work / f"{stage}-{ray}-{workers}"
                    shutil.copytree(scene, copy, symlinks=True, ignore=shutil.ignore_patterns("fields", "eval", "bench*"))
                    if stage == "features":
                        shutil.rmtree(copy / "features" / "effnet-lite0__scale1", ignore_errors=True)
                    res = _run_child(["stage", str(copy), stage, ray, str(workers)])
                    print(f"| {stage} | {'local process' if ray == '-' else 'Ray, local cluster'} | "
                          f"{workers or '–'} | {res['seconds']:.1f} | {res['peak_mib']:.0f} |", flush=True)
                    shutil.rmtree(copy)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    counts = [int(v) for v in args.views.split(",")]
    root = Path(tempfile.mkdtemp(prefix="fmsplat-views-"))
    try:
        print("\n| views | maps | lift s | peak MiB |\n|---|---|---|---|")
        for n in counts:
            synthetic_cache(scene, root, n)
            for mode in ("stream", "memory"):
                res = _run_child(["views", str(scene), str(root), str(n), mode])
                print(f"| {n} | {'streamed from the cache' if mode == 'stream' else 'all in memory'} | "
                      f"{res['seconds']:.1f} | {res['peak_mib']:.0f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
