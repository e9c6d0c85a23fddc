"""`fmsplat` command line. Each command is a thin wrapper over one stage's entry point."""

from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Embed foundation-model features into 3D Gaussian Splatting scenes and query them in words.",
)


@app.callback()
def main() -> None:
    """fmsplat: foundation-model fields on 3D Gaussian Splatting scenes."""


@app.command()
def version() -> None:
    """Print the fmsplat, torch and numba versions."""
    import numba
    import torch

    from fmsplat import __version__

    typer.echo(f"fmsplat {__version__}  torch {torch.__version__}  numba {numba.__version__}")


@app.command("make-scene")
def make_scene_cmd(
    out: str = typer.Argument(..., help="Output dataset directory (must not exist unless --overwrite)."),
    preset: str = typer.Option("tiny", "--preset", help="Scene preset: tiny (CI) or bench."),
    seed: int = typer.Option(0, "--seed", help="Random seed (layout, textures, cameras)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
    video: bool = typer.Option(False, "--video", help="Instead: OUT/video.mp4 along a smooth closed path through the "
                               "room, with its true poses in OUT/transforms.json (input for fmsplat process-data)."),
    frames: int = typer.Option(120, "--frames", help="--video: number of frames."),
    fps: float = typer.Option(30.0, "--fps", help="--video: frame rate."),
    width: int = typer.Option(None, "--width", help="Image width (default: the preset's; --video: 320)."),
    height: int = typer.Option(None, "--height", help="Image height (default: the preset's; --video: 240)."),
) -> None:
    """Generate a labelled synthetic room scene (transforms.json dataset with labels/ and objects.json),
    or with --video a video of it with its true camera path."""
    import time

    from fmsplat.scene.synthetic import make_scene, make_video

    size = {k: v for k, v in (("width", width), ("height", height)) if v is not None}
    start = time.perf_counter()
    try:
        if video:
            path = make_video(out, preset=preset, seed=seed, frames=frames, fps=fps, overwrite=overwrite, progress=True,
                              **size)
        else:
            path = make_scene(out, preset=preset, seed=seed, overwrite=overwrite, **size)
    except (ValueError, FileExistsError) as err:
        typer.echo(f"fmsplat make-scene: {err}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{path}  ({preset}, seed {seed}, {time.perf_counter() - start:.1f} s)")


@app.command("process-data")
def process_data_cmd(
    src: str = typer.Argument(..., help="A video file (mp4, mov, webm, mkv) or a folder of photos (jpg, png, ...)."),
    out: str = typer.Option(..., "--out", "-o", help="Dataset folder to write (images/, sparse/0/, database.db, report.json)."),
    frames: int = typer.Option(100, "--frames", help="Video: frames to keep, spread over its length (blurred ones dropped)."),
    max_size: int = typer.Option(960, "--max-size", help="Longest image side in pixels (larger frames/photos are shrunk)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an OUT made from another source or settings."),
) -> None:
    """Pose a video or unposed photos by structure from motion (pycolmap, CPU) into a dataset for fmsplat train.

    A killed run resumes where it stopped (frames, features and matches are kept beside OUT)."""
    from fmsplat.scene.capture import CaptureConfig, process_data, summary

    try:
        report = process_data(src, out, CaptureConfig(frames=frames, max_size=max_size), overwrite=overwrite)
    except (ValueError, FileExistsError) as err:  # ValueError covers DatasetError, CaptureError and bad options
        typer.echo(f"fmsplat process-data: {err}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{out}: {summary(report)}")


@app.command()
def train(
    data: str = typer.Argument(..., help="Dataset: transforms.json (or its folder) or a COLMAP folder; or a video "
                                "or a photo folder, posed first by fmsplat process-data into OUT/data."),
    out: str = typer.Option(..., "--out", "-o", help="Scene directory to write (gaussians.ply, scene.json, metrics.json, renders/, sfm/)."),
    downscale: float = typer.Option(None, help="Image downscale factor (8 = 1/8 resolution); default: the smallest "
                                    "power of two that brings a view to 0.1 megapixel or less (the fox: 8)."),
    steps: int = typer.Option(None, help="Optimisation steps; the schedule is scaled to this (default: TrainConfig's)."),
    init: str = typer.Option(None, "--init", help="Initial Gaussians: auto (the dataset's points, else triangulated "
                             "from its poses with pycolmap, else random in the view frusta), points, sfm, frustum, box."),
    strategy: str = typer.Option(None, "--strategy", help="Densification: mcmc (relocate dead Gaussians, grow to "
                                 "--max-gaussians, position noise; Kheradmand et al. 2024) or 3dgs (clone/split/prune, "
                                 "opacity resets; Kerbl et al. 2023). Default: TrainConfig's."),
    max_gaussians: int = typer.Option(None, help="Gaussian budget: 3dgs stops densifying here, mcmc grows to it."),
    sh_degree: int = typer.Option(None, help="Maximum spherical-harmonics degree (0-3)."),
    test_every: int = typer.Option(None, help="Hold out every N-th view for evaluation (0: none)."),
    eval_every: int = typer.Option(None, help="Score the held-out views every N steps (metrics.json 'curve')."),
    seed: int = typer.Option(None, help="Random seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
) -> None:
    """Train a 3D Gaussian Splatting scene from posed photos (CPU, numba rasterizer); writes held-out
    render | photo | error panels to OUT/renders/test/."""
    from pathlib import Path

    from fmsplat.reconstruct import TrainConfig, train_gaussians
    from fmsplat.scene import DatasetError
    from fmsplat.scene.capture import process_data, source_kind
    from fmsplat.scene.capture import summary as capture_summary

    given = dict(downscale=downscale, steps=steps, init=init, strategy=strategy, max_gaussians=max_gaussians,
                 sh_degree=sh_degree, test_every=test_every, eval_every=eval_every, seed=seed)
    try:
        cfg = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:  # an invalid option: a usage error, not a traceback
        raise typer.BadParameter(str(exc)) from exc
    try:
        if source_kind(data) is not None:  # a capture: posed into OUT/data first, reused when unchanged
            report = process_data(data, Path(out) / "data", overwrite=True)
            typer.echo(f"{Path(out) / 'data'}: {capture_summary(report)}")
            data = str(Path(out) / "data")
        metrics = train_gaussians(data, out, cfg, resume=resume)
    except (DatasetError, FileNotFoundError) as err:
        typer.echo(f"fmsplat train: {err}", err=True)
        raise typer.Exit(1)
    test = metrics["test"]
    summary = f"{metrics['num_gaussians']} Gaussians"
    if metrics.get("train_seconds") is not None:
        summary += f" in {metrics['train_seconds']:.0f} s"
    if test.get("views"):
        summary += f", held-out PSNR {test['psnr']:.2f} dB, SSIM {test['ssim']:.3f} on {test['views']} views"
    typer.echo(f"{out}: {summary}")
    if metrics.get("panels"):
        typer.echo(f"look at: {Path(out) / metrics['panels'][0]} (render | photo | error; {len(metrics['panels'])} in "
                   f"{Path(out) / 'renders' / 'test'})")


def _parse_views(spec: str, dataset) -> list[int]:
    """--views: test, train, all or comma-separated view indices -> dataset indices."""
    named = {"test": dataset.test_indices, "train": dataset.train_indices, "all": list(range(len(dataset)))}
    if spec in named:
        if not named[spec]:
            raise typer.BadParameter(f"the dataset has no {spec} views (test_every={dataset.test_every}); "
                                     "pass --views train|all|0,5,9", param_hint="--views")
        return list(named[spec])
    try:
        picks = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"'{spec}' is not test, train, all or a list of view indices", param_hint="--views")
    bad = [i for i in picks if not 0 <= i < len(dataset)]
    if bad or not picks:
        raise typer.BadParameter(f"view(s) {bad or spec!r} do not exist (the dataset has {len(dataset)} views)",
                                 param_hint="--views")
    return picks


@app.command()
def render(
    scene: str = typer.Argument(..., help="Trained scene directory (fmsplat train)."),
    views: str = typer.Option(None, "--views", help="Panels render|photo|error of test, train, all or views 0,5,9 "
                              "(default: test, unless --path is given)."),
    path: str = typer.Option(None, "--path", help="Also render a video along a camera path: orbit or interpolate."),
    frames: int = typer.Option(120, "--frames", help="Video frames."),
    fps: float = typer.Option(30.0, "--fps", help="Video frame rate."),
    png_frames: bool = typer.Option(False, "--png-frames", help="Also write the video's frames as PNGs."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: SCENE/renders/)."),
    downscale: float = typer.Option(None, "--downscale", help="Image downscale (default: the scene's)."),
) -> None:
    """Render a trained scene for people: render|photo|error panels of views, or a video along a path."""
    from pathlib import Path

    from fmsplat.fields.base import FieldError, open_scene
    from fmsplat.reconstruct.renders import (interpolated_path, orbit_path, render_video, scene_background,
                                             write_view_panels)
    from fmsplat.scene import DatasetError, load_dataset

    if path is not None and path not in ("orbit", "interpolate"):
        raise typer.BadParameter(f"'{path}' is not orbit or interpolate", param_hint="--path")
    if frames < 1 or not fps > 0:
        raise typer.BadParameter("--frames must be >= 1 and --fps positive")
    try:
        bundle = open_scene(scene)
        dataset = bundle.dataset
        if downscale is not None and downscale != dataset.downscale:
            # same dataset and split as the scene, at another resolution (images load lazily)
            dataset = load_dataset(dataset.source, downscale=downscale, test_every=dataset.test_every)
    except (FieldError, DatasetError) as err:
        typer.echo(f"fmsplat render: {err}", err=True)
        raise typer.Exit(1)
    out_dir = Path(out) if out is not None else Path(scene) / "renders"
    background = scene_background(bundle.meta)
    model = bundle.gaussians
    written = []
    if views is not None or path is None:
        picks = _parse_views(views or "test", dataset)
        held_out = set(dataset.test_indices)
        # panels go to test/ or train/ by the view's split, as fmsplat train writes test/
        for split, members in (("test", [i for i in picks if i in held_out]), ("train", [i for i in picks if i not in held_out])):
            written += write_view_panels(model, dataset, members, out_dir / split, background)
    if path is not None:
        make = orbit_path if path == "orbit" else interpolated_path
        cams = make(dataset.cameras, frames)
        written.append(render_video(model, cams, out_dir / f"{path}.mp4", fps, background,
                                    frames_dir=out_dir / path if png_frames else None))
        if png_frames:
            written.append(out_dir / path / "frame_*.png")
    for p in written:
        typer.echo(str(p))


@app.command()
def features(
    scene: str = typer.Argument(..., help="Scene directory; features go to SCENE/features/<model key>/."),
    data: str = typer.Option(None, "--data", help="Dataset (default: data.path in SCENE/scene.json)."),
    downscale: float = typer.Option(None, "--downscale", help="Image downscale (default: scene.json's, else 1)."),
    model: str = typer.Option("effnet", "--model", help="Extractor: effnet, effnet-mid, clip:<id|dir>, siglip:, dino:, dinov2:."),
    pyramid: bool = typer.Option(False, "--pyramid", help="FMGS hybrid multi-scale map (language-aligned models)."),
    opt: list[str] = typer.Option([], "--opt", help="Extractor option KEY=VALUE, repeatable (input_scale=2, stride=8, mode=maskclip)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default; 1 is faster on a busy machine)."),
) -> None:
    """Extract dense foundation-model features of every view and cache them (resumable)."""
    from fmsplat.foundation.command import parse_options, run_features

    s = run_features(scene, data, downscale, model, pyramid, options=parse_options(opt), threads=threads)
    typer.echo(f"{s['folder']}: {s['views']} views, {s['dim']}-d, grid {s['grid']}, {s['seconds']} s")



@app.command()
def fit(
    scene: str = typer.Argument(..., help="Trained scene directory (fmsplat train); the field goes to SCENE/fields/<method>/."),
    method: str = typer.Option("distill", "--method", "-m", help="Field method: distill (baseline), fmgs, m3."),
    models: str = typer.Option(None, "--models", help="Comma-separated extractors, e.g. effnet,effnet-mid (default: the method's)."),
    steps: int = typer.Option(None, "--steps", help="Optimisation steps (default: the method's)."),
    opt: list[str] = typer.Option([], "--opt", help="Config field KEY=VALUE, repeatable (see the method's Config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the field's last checkpoint."),
) -> None:
    """Fit a feature field (foundation-model features) on a trained Gaussian scene, geometry frozen."""
    from fmsplat.fields import fit_field
    from fmsplat.foundation.command import parse_options

    overrides = parse_options(opt)
    if steps is not None:
        overrides["steps"] = steps
    model_list = [m for m in models.split(",") if m.strip()] if models else None
    field = fit_field(scene, method, models=model_list, resume=resume, **overrides)
    s = field.summary
    typer.echo(f"{scene}/fields/{method}: spaces {', '.join(field.spaces)}; "
               f"{s.get('steps', '?')} steps in {s.get('fit_seconds', '?')} s")


@app.command()
def demo(
    out: str = typer.Option("fmsplat-demo", "--out", "-o", help="Work directory (data, scene, report); reused to resume."),
    preset: str = typer.Option("bench", "--preset", help="Synthetic scene: bench (8 objects, 72 views) or tiny (fast)."),
    methods: str = typer.Option(None, "--methods", help="Comma-separated field methods (default: the best measured one)."),
    compare: bool = typer.Option(False, "--compare", help="Also fit and evaluate the distillation baseline."),
    train_steps: int = typer.Option(None, "--train-steps", help="3DGS steps (default: per preset)."),
    fit_steps: int = typer.Option(None, "--fit-steps", help="Feature-field steps (default: the method's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the scene and the training."),
) -> None:
    """Run the whole pipeline offline on the embedded models and write a report: scene -> 3DGS -> field -> eval."""
    from fmsplat.demo import BASELINE, DEFAULT_METHOD, DemoConfig, run_demo

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else [DEFAULT_METHOD]
    if compare and BASELINE not in chosen:
        chosen.append(BASELINE)
    cfg = DemoConfig(preset=preset, seed=seed, train_steps=train_steps, methods=tuple(chosen), fit_steps=fit_steps)
    report = run_demo(out, cfg)
    typer.echo(f"report: {report / 'README.md'}")

@app.command()
def query(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit)."),
    text: str = typer.Argument(..., help="What to look for, e.g. \"espresso cup\"."),
    view: int = typer.Option(None, "--view", help="Dataset view index to look from (default: the first held-out view)."),
    method: str = typer.Option(None, "--method", "-m", help="Field method (default: the newest fitted one)."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: SCENE/queries/<method>/)."),
    space: str = typer.Option(None, "--space", help="Language-aligned space to query (default: the field's first)."),
    scale: float = typer.Option(1.0, "--scale", help="Render at this fraction of the view's size."),
    negatives: str = typer.Option(None, "--negatives", help="Comma-separated canonical negatives (default: object,things,stuff,texture)."),
    radius: float = typer.Option(None, "--radius", help="Select only Gaussians within this distance of the 3D point."),
    relative: float = typer.Option(0.7, "--relative", help="Selection cut, fraction of the way from the lowest to the highest relevancy."),
) -> None:
    """Answer a text query: relevancy map, mask, 2D/3D location and the object's Gaussians (PNG, PLY, JSON)."""
    from fmsplat.query.command import run_query
    from fmsplat.query.relevancy import CANONICAL_NEGATIVES

    negs = tuple(n.strip() for n in negatives.split(",") if n.strip()) if negatives else CANONICAL_NEGATIVES
    rec = run_query(scene, text, view=view, method=method, out=out, space=space, scale=scale, negatives=negs,
                    radius=radius, relative=relative)
    loc, p3 = rec["location_2d"], rec["location_3d"]
    lifted = "none (no surface)" if p3["lifted"] is None else "(" + ", ".join(f"{v:.3f}" for v in p3["lifted"]) + ")"
    typer.echo(f"{rec['method']} / {rec['view']}: '{text}' at pixel ({loc['x']}, {loc['y']}) relevancy {loc['relevancy']:.3f}; "
               f"3D {lifted}, from Gaussians (" + ", ".join(f"{v:.3f}" for v in p3["gaussians"]) + f"); "
               f"{rec['selection']['count']} Gaussians selected; {rec['timing_ms']['total']:.0f} ms")
    typer.echo(f"files: {rec['files']['json']} (+ relevancy, mask, overlay PNG" + (", PLY)" if "gaussians" in rec["files"] else ")"))


@app.command("eval")
def eval_cmd(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit)."),
    data: str = typer.Option(None, "--data", help="Labelled dataset (labels/, objects.json; default: the scene's)."),
    method: str = typer.Option(None, "--method", "-m", help="Field method (default: the newest fitted one)."),
    space: str = typer.Option(None, "--space", help="Language-aligned space to query (default: the field's first)."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: SCENE/eval/<method>/, or <method>-<space>/ with --space)."),
    render_scale: float = typer.Option(1.0, "--render-scale", help="Render the field at this fraction of the label size."),
    no_panels: bool = typer.Option(False, "--no-panels", help="Skip the per-query PNG panels."),
    compare: list[str] = typer.Option([], "--compare", help="Other eval.json files (or folders) to put in the comparison table."),
    latency_repeats: int = typer.Option(5, "--latency-repeats", help="Timed relevancy maps for the latency median (0: skip)."),
) -> None:
    """Score a fitted field (LERF localisation, LangSplat mIoU, 3D, feature fidelity, PSNR, latency) and the 2D teacher."""
    from fmsplat.eval import evaluate_scene, format_comparison, load_result

    r = evaluate_scene(scene, data=data, method=method, out_dir=out, panels=not no_panels, render_scale=render_scale,
                       latency_repeats=latency_repeats, space=space)
    others = [load_result(c) for c in compare]
    typer.echo(format_comparison([r, *others]))
    typer.echo(f"written: {r['out_dir']}/eval.json, eval.md" + ("" if no_panels else f", {len(r['panels'])} panels"))


if __name__ == "__main__":
    app()
