"""Feature fields side by side on one trained scene: methods, the FMGS and M3 ablations.

    python bench/fields.py SCENE                          # the 'methods' set: distill, fmgs, m3
    python bench/fields.py SCENE --set fmgs-ablations     # FMGS without the pyramid / the pixel alignment
    python bench/fields.py SCENE --set m3-ablations       # models, query dims, attention vs distillation, W
    python bench/fields.py SCENE --only fmgs,m3 --steps 600   # some variants, shorter fits
    python bench/fields.py SCENE --set warm --preset cpu --sweep 0,100,400   # warm vs cold starts against steps

SCENE is a trained scene (`fmsplat train`, or `fmsplat demo`'s work/scene). Each variant is fitted in
its own folder under --work (default SCENE/../bench-fields/<variant>/), which links the scene's
gaussians.ply, scene.json and feature / memory-bank caches, so extraction is paid once and every
variant sees the same geometry and targets. A variant already fitted and scored is read back, not
redone (the run is resumable: rerun the same command). Each is scored by `fmsplat eval` (no panels)
on the dataset's labelled views; the table gives LERF localisation accuracy, LangSplat mIoU, the
3D error (median distance of the Gaussian-derived point to the object's box, scene units), feature
fidelity (1 - cos against the extractor on held-out views), fit time (the field's own summary:
wall seconds of the fit, extraction and bank building included), query latency (median ms of one
relevancy map at the label size), and storage (field tensors on disk, bytes per Gaussian, M3 banks).
The first row is the 2D teacher (the extractor run on each held-out photo).

Fit times are wall seconds on whatever the machine is doing: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The pyramid's tiles are encoded at 96 px instead of 224: at 224 the pyramid costs 24 s per 320x240
# view on 2 cores (29 min for the bench preset), at 96 px 4.9 s (bench/README.md, "Feature fields").
TILE = {"pyramid_tile_input": 96}

# name -> (method, models or None for the method's default, config overrides, what it shows)
VARIANTS: dict[str, tuple[str, list[str] | None, dict, str]] = {
    "distill": ("distill", None, {}, "baseline: per-Gaussian 32-d latents per space, linear decoders"),
    "distill-cold": ("distill", None, {"warm_start": False}, "baseline, latents start at zero (published)"),
    "lift": ("lift", None, {}, "training-free lifting: blending-weighted means of PCA-32 teacher latents, no steps"),
    "lift-norm": ("lift", None, {"normalize": True}, "lifting unit-length teacher features"),
    "lift-full": ("lift", None, {"dim": 0}, "lifting the full teacher features (N x D floats per space)"),
    "m3-cold": ("m3", None, {"warm_start": False}, "M3, queries start at N(0, 1) (published)"),
    "m3-warm": ("m3", None, {"warm_start": True}, "M3, queries pre-fitted to the lifted features (off by default)"),
    "m3-pca": ("m3", None, {"projection_init": "pca"}, "M3, W_m = the bank's principal directions (fixed)"),
    "m3-pca-warm": ("m3", None, {"projection_init": "pca", "warm_start": True},
                    "M3, W_m = the bank's principal directions, queries pre-fitted to the lifted features"),
    "fmgs-cold": ("fmgs", None, {**TILE, "warm_start": False}, "FMGS, hash grid and heads start at random (published)"),
    "fmgs": ("fmgs", None, dict(TILE), "FMGS, paper settings (hybrid pyramid, pixel alignment after 2,500/4,200)"),
    "m3": ("m3", None, {}, "M3, effnet + effnet-mid + effnet-labels, fixed W (official), Config defaults"),
    "fmgs-no-pyramid": ("fmgs", None, {"pyramid": False}, "FMGS ablation: plain dense language map"),
    "fmgs-no-align": ("fmgs", None, {**TILE, "pixel_align": False}, "FMGS ablation: no pixel-alignment loss"),
    "m3-1model": ("m3", ["effnet"], {}, "M3 with one model (effnet)"),
    "m3-2models": ("m3", ["effnet", "effnet-mid"], {}, "M3 with two models"),
    "m3-q8": ("m3", None, {"slice_dims": "effnet=8,effnet-mid=16,effnet-labels=16"}, "M3, query dims halved"),
    "m3-q32": ("m3", None, {"slice_dims": "effnet=32,effnet-mid=64,effnet-labels=64"}, "M3, query dims doubled"),
    "m3-learned-w": ("m3", None, {"learn_projection": True}, "M3 with W_m learned (the paper's reading)"),
    "m3-1model-pca-warm": ("m3", ["effnet"], {"projection_init": "pca", "warm_start": True},
                           "M3 with one model (effnet), principal W_m, warm start (compare distill-16)"),
    "distill-16": ("distill", ["effnet"], {"dim": 16}, "plain distillation at M3's effnet query dim (16; "
                   "compare m3-1model: memory attention at the same dim)"),
    "m3-paper-lr": ("m3", None, {"lr_queries": 5e-4}, "M3 with the paper's query learning rate (5e-4)"),
    "m3-lr5e-3": ("m3", None, {"lr_queries": 5e-3}, "M3 with a 10x larger query learning rate than the paper's"),
}
SETS = {
    "methods": ["fmgs", "m3", "distill", "lift"],
    "warm": ["lift", "lift-norm", "distill", "distill-cold", "fmgs", "fmgs-cold", "m3", "m3-warm"],
    "fmgs-ablations": ["fmgs", "fmgs-no-pyramid", "fmgs-no-align"],
    "m3-projection": ["distill-16", "m3-1model", "m3-1model-pca-warm", "m3", "m3-pca", "m3-pca-warm"],
    "m3-ablations": ["m3", "m3-2models", "m3-1model", "m3-q8", "m3-q32", "m3-learned-w", "distill-16", "m3-paper-lr",
                     "m3-lr5e-3"],
}
LINKED = ("gaussians.ply", "scene.json", "metrics.json", "features", "memory")


def variant_dir(scene: Path, work: Path, name: str) -> Path:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    for entry in LINKED:
        src = (scene / entry).resolve()
        if entry in ("features", "memory"):
            src.mkdir(exist_ok=True)
        dst = d / entry
        if src.exists() and not dst.exists():
            os.symlink(src, dst)
    return d


def _record(d: Path, name: str, method: str, models, overrides: dict, field, fit_seconds, fit_wall,
            latency_repeats: int, progress: bool, steps) -> dict:
    from fmsplat.eval import evaluate_scene, load_result

    evaluate_scene(d, method=method, out_dir=d / "eval", panels=False, progress=progress,
                   latency_repeats=latency_repeats)
    result = load_result(d / "eval")  # the JSON form, as written
    from fmsplat.workspace import Workspace

    tensors = Workspace(d).read_manifest(Workspace(d).field_dir(method))[1]["tensors"]
    s = field.summary
    out = {"variant": name, "method": method, "models": models, "overrides": overrides,
           "fit_seconds": fit_seconds, "fit_wall": fit_wall, "steps": steps,
           "field_bytes": tensors.stat().st_size if tensors.is_file() else None,
           "num_gaussians": len(field.gaussians), "memory": s.get("memory"), "summary": result["summary"],
           "teacher": result.get("teacher"), "space": result.get("space")}
    (d / "bench.json").write_text(json.dumps(out, indent=1))
    return out


def run_variant(scene: Path, work: Path, name: str, steps: int | None, progress: bool, extra: dict | None = None,
                latency_repeats: int = 5, preset: str = "paper", snapshots: tuple[int, ...] = ()) -> list[dict]:
    """Fit and score one variant; with `snapshots`, the same run is also saved and scored after each of
    those step counts (fields.loop.observing): rows for every snapshot, then the finished fit."""
    from fmsplat.fields import fit_field
    from fmsplat.fields.loop import observing

    method, models, overrides, _ = VARIANTS[name]
    overrides = {**(extra or {}), **overrides}  # the variant's own settings win over --opt
    if steps is not None and method != "lift":
        overrides["steps"] = steps
    overrides["preset"] = preset
    snapshots = tuple(sorted(set(snapshots))) if method != "lift" else ()
    d = variant_dir(scene, work, name)
    names = {k: f"{name}@{k}" for k in snapshots}
    records = [variant_dir(scene, work, n) / "bench.json" for n in names.values()] + [d / "bench.json"]
    if all(r.is_file() for r in records):
        saved = [json.loads(r.read_text()) for r in records]
        if all(x.get("overrides") == overrides and x.get("models") == models for x in saved):
            return saved
    settings = {k: v for k, v in overrides.items() if k != "preset"}
    taken: dict[int, tuple[Path, float]] = {}
    clock = {"start": time.perf_counter(), "paused": 0.0}

    def snapshot(method_, field_, done):
        if done in names and done not in taken:
            t = time.perf_counter()
            sd = variant_dir(scene, work, names[done])
            summary, field_.summary = field_.summary, {"steps": done, "snapshot_of": name}
            field_.save(sd)
            field_.summary = summary
            taken[done] = (sd, t - clock["start"] - clock["paused"])
            clock["paused"] += time.perf_counter() - t

    with observing(snapshot):
        field = fit_field(d, method, models=models, resume=True, progress=progress, preset=preset, **settings)
    fit_wall = time.perf_counter() - clock["start"] - clock["paused"]
    rows = []
    for done, (sd, elapsed) in sorted(taken.items()):
        from fmsplat.fields import load_field

        snap = load_field(sd, method)
        rows.append(_record(sd, name, method, models, overrides, snap, round(elapsed, 1), elapsed, latency_repeats,
                            progress, done))
    rows.append(_record(d, name, method, models, overrides, field, field.summary.get("fit_seconds"), fit_wall,
                        latency_repeats, progress, field.summary.get("steps")))
    return rows


def _f(v, digits=3, pct=False):
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    spaces: list[str] = []
    for r in rows:
        for a in (r["summary"].get("fidelity") or {}):
            if a not in spaces:
                spaces.append(a)
    head = ["variant", "steps", "loc. acc %", "mIoU %", "3D Gauss dist", "3D Gauss in-box %"] + [f"1−cos {a}" for a in spaces]
    head += ["fit s", "ms / map", "field MB", "B / Gaussian", "banks MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    teacher = next((r["teacher"] for r in rows if r.get("teacher")), None)
    if teacher:
        lines.append("| " + " | ".join(["teacher (2D)", "–", _f(teacher["loc_acc"], pct=True), _f(teacher["miou"], pct=True)]
                                       + ["–"] * (2 + len(spaces)) + ["–", _f(teacher.get("latency_ms"), 0)]
                                       + ["–"] * 3) + " |")
    for r in rows:
        s, mem = r["summary"], r.get("memory") or {}
        fid = s.get("fidelity") or {}
        banks = mem.get("banks_bytes")
        lines.append("| " + " | ".join(
            [r["variant"].split("@")[0], str(r.get("steps", "–")), _f(s["loc_acc"], pct=True), _f(s["miou"], pct=True), _f(s.get("gauss_dist_median")),
             _f(s.get("gauss_in_box"), pct=True)]
            + [_f((fid.get(a) or {}).get("one_minus_cos")) for a in spaces]
            + [_f(r.get("fit_seconds"), 0), _f(s.get("latency_ms"), 0),
               _f(r["field_bytes"] / 2**20, 1) if r.get("field_bytes") else "–",
               str(mem.get("bytes_per_gaussian", "–")),
               _f(sum(banks.values()) / 2**20, 2) if banks else "–"]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scene", type=Path)
    ap.add_argument("--set", default="methods", choices=sorted(SETS))
    ap.add_argument("--only", default=None, help=f"comma-separated variants instead of a set; known: {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=None, help="steps of every fit (default: each method's)")
    ap.add_argument("--sweep", default=None, help="comma-separated step counts at which each fit is also saved and "
                                                  "scored (one run per variant), e.g. 0,100,400")
    ap.add_argument("--preset", default="paper", choices=["paper", "cpu"], help="settings the variants start from")
    ap.add_argument("--opt", action="append", default=[],
                    help="METHOD:KEY=VALUE, repeatable: a config override for every variant of METHOD "
                         "(e.g. fmgs:render_scale=0.25); a variant's own overrides take precedence")
    ap.add_argument("--latency-repeats", type=int, default=5, help="timed relevancy maps per variant (0: none)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else SETS[args.set]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    from fmsplat.fields.configs import parse_opts

    extra: dict[str, dict] = {}
    for item in args.opt:
        method, sep, pair = item.partition(":")
        if not sep:
            sys.exit(f"--opt {item!r}: expected METHOD:KEY=VALUE")
        extra.setdefault(method, {}).update(parse_opts(method, [pair]))  # read by each setting's declared type
    work = args.work or args.scene.resolve().parent / "bench-fields"
    rows = []
    snapshots = tuple(int(c) for c in args.sweep.split(",")) if args.sweep else ()
    for name in names:
        print(f"== {name}: {VARIANTS[name][3]}", flush=True)
        got = run_variant(args.scene, work, name, args.steps, not args.quiet, extra.get(VARIANTS[name][0], {}),
                          args.latency_repeats, args.preset, snapshots)
        rows += got
        print(table(got), flush=True)
    print()
    print(f"scene {args.scene} ({rows[0]['num_gaussians']} Gaussians), query space {rows[0]['space']}"
          + (f", {args.steps} steps each" if args.steps else ", each method's default steps")
          + "".join(f"; {m}: {o}" for m, o in extra.items()))
    print(table(rows))


if __name__ == "__main__":
    main()
