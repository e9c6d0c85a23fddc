"""`fmsplat` command line. Each command is a thin wrapper over one stage's entry point."""

from __future__ import annotations

import os
import sys

from pathlib import Path

import typer
from typer.core import TyperCommand, TyperGroup
from typer.core import _click as click  # typer vendors its own click

# Errors a user causes (a bad file, a missing path, a bad option): printed as one line, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, NotADirectoryError,
                                                 IsADirectoryError, PermissionError)


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


class _Group(TyperGroup):
    """The fmsplat command group: user errors become `fmsplat <command>: <message>` on stderr with
    exit code 1 (usage errors: two lines, exit code 2); real bugs keep their traceback, and
    --debug (or FMSPLAT_DEBUG=1) shows the traceback of every error."""

    def invoke(self, ctx: click.Context):
        from fmsplat.errors import FmsplatError

        try:
            return super().invoke(ctx)
        except (FmsplatError, *_USER_ERRORS) as err:
            if ctx.params.get("debug") or os.environ.get("FMSPLAT_DEBUG"):
                raise
            command = " ".join(["fmsplat", *([ctx.invoked_subcommand] if ctx.invoked_subcommand else [])])
            message = _one_line(err)
            if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in message:
                message = f"{err.filename}: {err.strerror or message}"
            click.echo(f"{command}: {message}", err=True)
            ctx.exit(1)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, "fmsplat", complete_var, standalone_mode=False, **extra)
        except click.exceptions.ClickException as err:  # a usage error: two plain lines, no panel
            where = err.ctx.command_path if getattr(err, "ctx", None) is not None else "fmsplat"
            click.echo(f"{where}: {_one_line(err.format_message())}", err=True)
            click.echo(f"(see: {where} --help)", err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _range(lo: float | None = None, hi: float | None = None, *, above: bool = False):
    """An option callback: the value (if given) is a finite number >= lo (> lo with `above`) and <= hi. NaN
    passes click's own range checks (every comparison with it is false), so the check is written here."""
    import math

    def check(value):
        if value is None:
            return value
        bad = not math.isfinite(value) or (lo is not None and (value <= lo if above else value < lo)) \
            or (hi is not None and value > hi)
        if bad:
            bounds = [f"{'>' if above else '>='} {lo:g}" if lo is not None else "", f"<= {hi:g}" if hi is not None else ""]
            raise typer.BadParameter(f"must be a number {' and '.join(b for b in bounds if b)}, got {value}")
        return value
    return check


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="Embed foundation-model features into 3D Gaussian Splatting scenes and query them in words.",
)


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of any error (also: FMSPLAT_DEBUG=1)."),
) -> None:
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
    frames: int = typer.Option(120, "--frames", help="--video: number of frames.", callback=_range(1)),
    fps: float = typer.Option(30.0, "--fps", help="--video: frame rate.", callback=_range(0, 1000, above=True)),
    width: int = typer.Option(None, "--width", help="Image width (default: the preset's; --video: 320).", callback=_range(8, 8192)),
    height: int = typer.Option(None, "--height", help="Image height (default: the preset's; --video: 240).", callback=_range(8, 8192)),
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
    frames: int = typer.Option(100, "--frames", help="Video: frames to keep, spread over its length (blurred ones dropped).", callback=_range(1)),
    max_size: int = typer.Option(960, "--max-size", help="Longest image side in pixels (larger frames/photos are shrunk).", callback=_range(16)),
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


def _settings_options(cls):
    """Give a command one `--name` option per field of settings class `cls` (fmsplat.config), its help the
    field's doc, type and default: the options are the config, never a hand-kept copy. Each value is read
    by the field's declared type (settings.parse_value) and reaches the command in `**given`; an option
    not given is absent there, so the config's default holds."""
    import inspect
    from dataclasses import fields

    from fmsplat import config as settings

    def _reader(cls, name: str, flag: str):
        def read(text: str | None):
            try:
                return None if text is None else settings.parse_value(cls, name, text, flag)
            except settings.ConfigError as err:  # a usage error: exit 2 with the usage line
                raise typer.BadParameter(str(err)) from None
        return read

    def add(fn):
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for f in fields(cls):
            tp = settings.field_type(cls, f.name)
            flag = "--" + f.name.replace("_", "-")
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation="str", default=typer.Option(
                None, flag, metavar=settings.type_name(tp), rich_help_panel=f"{cls.label.capitalize()} (fmsplat.config)",
                help=f"{f.metadata['doc']} (default: {settings.shown(settings.default_of(f))})",
                callback=_reader(cls, f.name, flag))))
        fn.__signature__ = sig.replace(parameters=params)
        return fn
    return add


def _given(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _train_settings(fn):
    from fmsplat.reconstruct.configs import TrainConfig

    return _settings_options(TrainConfig)(fn)


@app.command()
@_train_settings
def train(
    data: str = typer.Argument(..., help="Dataset: transforms.json (or its folder) or a COLMAP folder; or a video "
                                "or a photo folder, posed first by fmsplat process-data into OUT/data."),
    out: str = typer.Option(..., "--out", "-o", help="Scene directory to write (gaussians.ply, scene.json, metrics.json, renders/, sfm/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the scene already in --out (its fields, "
                                   "features, renders and checkpoints go too)."),
    **given,
) -> None:
    """Train a 3D Gaussian Splatting scene from posed photos (CPU, numba rasterizer); writes held-out
    render | photo | error panels to OUT/renders/test/."""
    from pathlib import Path

    from fmsplat.reconstruct import TrainConfig, train_gaussians
    from fmsplat.scene import DatasetError
    from fmsplat.scene.capture import process_data, source_kind
    from fmsplat.scene.capture import summary as capture_summary

    try:
        cfg = TrainConfig(**_given(given))
    except ValueError as exc:  # an invalid option: a usage error, not a traceback
        raise typer.BadParameter(str(exc)) from exc
    if resume and overwrite:
        raise typer.BadParameter("--resume and --overwrite exclude each other")
    from fmsplat.workspace import Workspace

    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a directory", param_hint="--out")
    ws = Workspace(out_path)
    existing = ws.existing_outputs()  # the capture posed into OUT/data is input, not output
    if existing and not (resume or overwrite):
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        typer.echo(f"fmsplat train: {out} is not empty ({shown}); pass --resume to continue it, --overwrite to "
                   "replace it, or choose another --out", err=True)
        raise typer.Exit(1)
    if existing and overwrite:
        ws.clean()
    ws.check_writable()  # before the SfM and the steps, not when the result is written
    try:
        if source_kind(data) is not None:  # a capture: posed into OUT/data first, reused when unchanged
            report = process_data(data, ws.capture_dir, overwrite=True)
            typer.echo(f"{ws.capture_dir}: {capture_summary(report)}")
            data = str(ws.capture_dir)
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
    path: str = typer.Option(None, "--path", help="Also render a video along a camera path: orbit (a spiral for a "
                             "forward-facing capture, which has no other side), spiral or interpolate."),
    frames: int = typer.Option(120, "--frames", help="Video frames.", callback=_range(1)),
    fps: float = typer.Option(30.0, "--fps", help="Video frame rate.", callback=_range(0, 1000, above=True)),
    png_frames: bool = typer.Option(False, "--png-frames", help="Also write the video's frames as PNGs."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: SCENE/renders/)."),
    downscale: float = typer.Option(None, "--downscale", help="Image downscale (default: the scene's).", callback=_range(0, 1024, above=True)),
) -> None:
    """Render a trained scene for people: render|photo|error panels of views, or a video along a path."""
    from pathlib import Path
    from fmsplat.errors import SceneError
    from fmsplat.reconstruct.renders import (focus_depth, interpolated_path, is_forward_facing, orbit_path,
                                             render_video, spiral_path, write_view_panels)
    from fmsplat.scene import DatasetError, load_dataset

    if path is not None and path not in ("orbit", "spiral", "interpolate"):
        raise typer.BadParameter(f"'{path}' is not orbit, spiral or interpolate", param_hint="--path")
    if frames < 1 or not fps > 0:
        raise typer.BadParameter("--frames must be >= 1 and --fps positive")
    try:
        from fmsplat.workspace import Workspace
        bundle = Workspace.open(scene)
        dataset = bundle.dataset
        if downscale is not None and downscale != dataset.downscale:
            # same dataset and split as the scene, at another resolution (images load lazily)
            dataset = load_dataset(dataset.source, downscale=downscale, test_every=dataset.test_every)
    except (SceneError, DatasetError) as err:
        typer.echo(f"fmsplat render: {err}", err=True)
        raise typer.Exit(1)
    out_dir = Path(out) if out is not None else bundle.renders_dir
    background = bundle.background()
    model = bundle.gaussians
    written = []
    if views is not None or path is None:
        picks = _parse_views(views or "test", dataset)
        held_out = set(dataset.test_indices)
        # panels go to test/ or train/ by the view's split, as fmsplat train writes test/
        for split, members in (("test", [i for i in picks if i in held_out]), ("train", [i for i in picks if i not in held_out])):
            written += write_view_panels(model, dataset, members, out_dir / split, background)
    if path is not None:
        if path == "orbit" and is_forward_facing(dataset.cameras):
            typer.echo("the cameras all face one way (a forward-facing capture): a spiral instead of an orbit", err=True)
            path = "spiral"
        if path == "spiral":
            cams = spiral_path(dataset.cameras, frames, focus_depth(model, dataset.cameras))
        else:
            cams = (orbit_path if path == "orbit" else interpolated_path)(dataset.cameras, frames)
        written.append(render_video(model, cams, out_dir / f"{path}.mp4", fps, background,
                                    frames_dir=out_dir / path if png_frames else None))
        if png_frames:
            written.append(out_dir / path / "frame_*.png")
    for p in written:
        typer.echo(str(p))


RAY_HELP = ("Run per view on a Ray cluster (pip install 'fmsplat[ray]'): 'local' starts one on this machine, "
            "'auto' joins the one running here, HOST:PORT an existing cluster (its scene files on a shared disk).")


@app.command()
def features(
    scene: str = typer.Argument(..., help="Scene directory; features go to SCENE/features/<model key>/."),
    data: str = typer.Option(None, "--data", help="Dataset (default: data.path in SCENE/scene.json)."),
    downscale: float = typer.Option(None, "--downscale", help="Image downscale (default: scene.json's, else 1).", callback=_range(0, 1024, above=True)),
    model: str = typer.Option("effnet", "--model", help="Extractor: effnet, effnet-mid, clip:<id|dir>, siglip:, dino:, dinov2:."),
    pyramid: bool = typer.Option(False, "--pyramid", help="FMGS hybrid multi-scale map (language-aligned models)."),
    opt: list[str] = typer.Option([], "--opt", help="Extractor option KEY=VALUE, repeatable (input_scale=2, stride=8, mode=maskclip)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default; 1 is faster on a busy machine).", callback=_range(0, 1024)),
    ray: str = typer.Option(None, "--ray", envvar="FMSPLAT_RAY_ADDRESS", show_envvar=True, help=RAY_HELP),
    workers: int = typer.Option(0, "--workers", min=0, help="--ray: workers (0: one per CPU of the cluster)."),
) -> None:
    """Extract dense foundation-model features of every view and cache them (resumable)."""
    from fmsplat.apps.features import parse_options, run_features

    s = run_features(scene, data, downscale, model, pyramid, options=parse_options(opt), threads=threads, ray=ray,
                     workers=workers or None)
    typer.echo(f"{s['folder']}: {s['views']} views, {s['dim']}-d, grid {s['grid']}, {s['seconds']} s")



class _FitCommand(TyperCommand):
    """`fmsplat fit --help` ends with every method's settings and presets (read from fields.configs on demand)."""

    def format_help(self, ctx, formatter) -> None:
        super().format_help(ctx, formatter)
        from fmsplat.fields.configs import settings_help

        formatter.write("\n" + settings_help() + "\n")


@app.command(cls=_FitCommand)
def fit(
    scene: str = typer.Argument(..., help="Trained scene directory (fmsplat train); the field goes to SCENE/fields/<method>/."),
    # fields.configs.DEFAULT_METHOD, spelled out: importing it loads torch before --help (a test ties the two)
    method: str = typer.Option("lift", "--method", "-m", help="Field method: lift (the default: seconds, no "
                               "training), distill (baseline), fmgs, m3 (bench/README.md, 'Which field by default')."),
    models: str = typer.Option(None, "--models", help="Comma-separated extractors, e.g. effnet,effnet-mid (default: the method's)."),
    preset: str = typer.Option(None, "--preset", help="Settings preset: paper (published, GPU-sized) or cpu (minutes on "
                               "2 cores); default: paper with CUDA, cpu without."),
    steps: int = typer.Option(None, "--steps", help="Optimisation steps (default: the preset's).", callback=_range(0)),
    opt: list[str] = typer.Option([], "--opt", help="Setting KEY=VALUE, repeatable, read by its declared type (listed below)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the field's last checkpoint."),
    ray: str = typer.Option(None, "--ray", envvar="FMSPLAT_RAY_ADDRESS", show_envvar=True, help="--method lift (extraction and lifting) "
                            "or m3 (extraction and Algorithm 1 banks): " + RAY_HELP),
    workers: int = typer.Option(0, "--workers", min=0, help="--ray: workers (0: one per CPU of the cluster)."),
) -> None:
    """Fit a feature field (foundation-model features) on a trained Gaussian scene, geometry frozen."""
    from fmsplat.fields import fit_field
    from fmsplat.fields.configs import config_class, default_preset, make_config, parse_opts

    config_class(method)  # an unknown method fails before anything else
    overrides = parse_opts(method, opt)
    if steps is not None:
        overrides["steps"] = steps
    if ray:
        if method not in ("lift", "m3") and os.environ.get("FMSPLAT_RAY_ADDRESS") == ray:
            typer.echo(f"fmsplat fit: FMSPLAT_RAY_ADDRESS not used: --method {method} has no per-view stage on Ray "
                       f"(extract its features with fmsplat features first)", err=True)
        elif method not in ("lift", "m3"):
            raise typer.BadParameter(f"--ray runs per-view stages: fit --method lift or m3 (and fmsplat features), "
                                     f"not --method {method}; extract its features with fmsplat features --ray first")
        else:
            overrides["ray"], overrides["workers"] = ray, workers
    why = "chosen with --preset"
    if preset is None:
        preset, why = default_preset()
        why += "; --preset paper|cpu to choose"
    config = make_config(method, preset, overrides)  # bad values fail here, before the scene is read
    typer.echo(f"fmsplat fit: {method} with the {preset} preset ({why})")
    model_list = [m for m in models.split(",") if m.strip()] if models else None
    field = fit_field(scene, method, models=model_list, resume=resume, config=config)
    s = field.summary
    typer.echo(f"{scene}/fields/{method}: spaces {', '.join(field.spaces)}; "
               f"{s.get('steps', '?')} steps in {s.get('fit_seconds', '?')} s")


@app.command()
def demo(
    out: str = typer.Option("fmsplat-demo", "--out", "-o", help="Work directory (data, scene, report); reused to resume."),
    preset: str = typer.Option("bench", "--preset", help="Synthetic scene: bench (8 objects, 72 views) or tiny (fast)."),
    methods: str = typer.Option(None, "--methods", help="Comma-separated field methods (default: the best measured one)."),
    compare: bool = typer.Option(False, "--compare", help="Also fit and evaluate the distillation baseline."),
    train_steps: int = typer.Option(None, "--train-steps", help="3DGS steps (default: per preset).", callback=_range(1)),
    fit_steps: int = typer.Option(None, "--fit-steps", help="Feature-field steps (default: the method's).", callback=_range(0)),
    seed: int = typer.Option(0, "--seed", help="Random seed of the scene and the training."),
) -> None:
    """Run the whole pipeline offline on the embedded models and write a report: scene -> 3DGS -> field -> eval."""
    from fmsplat.apps.demo import BASELINE, DEFAULT_METHOD, DemoConfig, run_demo

    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else [DEFAULT_METHOD]
    if compare and BASELINE not in chosen:
        chosen.append(BASELINE)
    cfg = DemoConfig(preset=preset, seed=seed, train_steps=train_steps, methods=tuple(chosen), fit_steps=fit_steps)
    report = run_demo(out, cfg)
    typer.echo(f"report: {report / 'README.md'}")

@app.command()
def query(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit)."),
    texts: list[str] = typer.Argument(None, help="What to look for, one or more phrases, e.g. \"espresso cup\" fox."),
    view: int = typer.Option(None, "--view", help="Dataset view index to show the answers in (default: the first held-out view)."),
    method: str = typer.Option(None, "--method", "-m", help="Field method (default: the newest fitted one)."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: SCENE/queries/<method>/)."),
    space: str = typer.Option(None, "--space", help="Language-aligned space to query (default: the field's first)."),
    scale: float = typer.Option(1.0, "--scale", help="Render at this fraction of the view's size.", callback=_range(0, 8, above=True)),
    negatives: str = typer.Option(None, "--negatives", help="Comma-separated canonical negatives (default: object,things,stuff,texture)."),
    all_parts: bool = typer.Option(False, "--all", help="Every separate part that matches (plurals: 'the chairs'), each with its own box."),
    relative: float = typer.Option(0.8, "--relative", help="Candidate cut of the 3D answer, fraction of the way from the lowest to the highest relevancy.", callback=_range(0, 1)),
    export_absent: bool = typer.Option(False, "--export-absent", help="Write the PLY of the best guess even when the phrase is not found."),
    at: str = typer.Option(None, "--at", help="Instead of phrases: what is at pixel X,Y of --view (or at a 3D point X,Y,Z)?"),
) -> None:
    """Ask a fitted scene in words: is it there, where (3D point, box, Gaussians as PLY) and how it looks from a view (PNG, JSON)."""
    from fmsplat.apps.query import run_query
    from fmsplat.query import SceneQuery
    from fmsplat.query.relevancy import CANONICAL_NEGATIVES

    negs = tuple(n.strip() for n in negatives.split(",") if n.strip()) if negatives else CANONICAL_NEGATIVES
    if at is not None:
        try:
            coords = [float(v) for v in at.split(",")]
        except ValueError:
            coords = []
        if len(coords) not in (2, 3) or texts:
            raise typer.BadParameter("--at takes X,Y (a pixel of --view) or X,Y,Z (a world point), and no phrases")
        sq = SceneQuery.open(scene, method, space, negs)
        if len(coords) == 2:
            concepts = sq.what_is_here(view=sq.view_index(view), pixel=(int(coords[0]), int(coords[1])))
        else:
            concepts = sq.what_is_here(point=coords)
        typer.echo(f"what is at {at} ({sq.core.vocabulary.source}):")
        for c in concepts:
            typer.echo(f"  {c.similarity:6.3f}  {c.name}")
        return
    if not texts:
        raise typer.BadParameter("give at least one phrase to look for (or --at X,Y)")
    records = run_query(scene, texts, view=view, method=method, out=out, space=space, scale=scale, negatives=negs,
                        all_parts=all_parts, relative=relative, export_absent=export_absent)
    for rec in records:
        a3 = rec["answer_3d"]
        state = "FOUND    " if rec["found"] else "not found"
        best = ", ".join(c["name"] for c in rec["presence"]["best_concepts"][:3])
        point = "(" + ", ".join(f"{v:.3f}" for v in a3["point"]) + ")"
        proj = rec["projection"]
        where = ("not in this view" if proj is None else
                 f"pixel ({proj['x']:.0f}, {proj['y']:.0f})" + ("" if proj["visible"] else " hidden"))
        typer.echo(f"{state} '{rec['text']}' score {rec['presence']['score']:.2f} at {point}, "
                   f"{sum(p['gaussians'] for p in a3['parts'])} Gaussians in {len(a3['parts'])} part(s), {where} "
                   f"in {rec['view']}; there: {best}")
    typer.echo(f"files: {Path(records[0]['files']['json']).parent}/ (relevancy, mask, object mask, overlay PNG, JSON"
               + (", PLY)" if any("gaussians" in r["files"] for r in records) else ")"))


@app.command()
def inventory(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit)."),
    method: str = typer.Option(None, "--method", "-m", help="Field method (default: the newest fitted one)."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: SCENE/inventory/<method>/)."),
    clusters: int = typer.Option(32, "--clusters", min=1, max=512, help="Feature groups before the spatial split (more: finer objects)."),
    ply: bool = typer.Option(False, "--ply", help="Also write each object's Gaussians as a PLY (objects/<n>-<name>.ply)."),
) -> None:
    """What is in the scene, without a phrase: its objects with names, 3D points, boxes and sizes (JSON, pictures, PLY)."""
    from fmsplat.apps.inventory import run_inventory

    record, folder, cached = run_inventory(scene, method, out, clusters, ply)
    objects = record["objects"]
    typer.echo(f"{sum(not o['background'] for o in objects)} objects and {sum(o['background'] for o in objects)} "
               f"background piece(s) in {record['scene']} ({record['method']} field"
               + (", read back from an earlier run)" if cached else f", {record['seconds']:.1f} s)"))
    for o in objects:
        size = " x ".join(f"{v:.2f}" for v in o["size"])
        point = "(" + ", ".join(f"{v:.2f}" for v in o["point"]) + ")"
        kind = "background " if o["background"] else ""
        also = ", ".join(c["name"] for c in o["concepts"][1:3])
        typer.echo(f"  {o['index']:3d}  {kind}{o['name']}  at {point}, size {size}, {o['gaussians']} Gaussians"
                   f" (also: {also})")
    typer.echo(f"files: {folder}/ (inventory.json, inventory.png, inventory_map.png" + (", objects/*.ply)" if ply else ")"))


@app.command()
def edit(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit); only read."),
    out: str = typer.Option(..., "--out", "-o", help="The edited scene: a new directory."),
    remove: str = typer.Option(None, "--remove", help="Phrase whose Gaussians are removed, e.g. \"chair\"."),
    keep: str = typer.Option(None, "--keep", help="Phrase whose Gaussians alone are kept, e.g. fox."),
    all_parts: bool = typer.Option(False, "--all", help="Every separate part that matches, not only the heaviest."),
    method: str = typer.Option(None, "--method", "-m", help="Field that answers the phrase (default: the newest fitted one)."),
    grow: bool = typer.Option(True, "--grow/--no-grow", help="Take the whole object: the answer grown over it (not across a wall or floor) with the faint Gaussians that draw it (the answer alone is often one surface)."),
) -> None:
    """Remove (--remove) or keep only (--keep) what a phrase names: a new scene with its fields cut to match, and before/after renders."""
    from fmsplat.query import SceneQuery
    from fmsplat.query.edit import edit_scene

    if (remove is None) == (keep is None):
        raise typer.BadParameter("give one of --remove PHRASE or --keep PHRASE")
    mode, text = ("remove", remove) if remove is not None else ("keep", keep)
    rec = edit_scene(SceneQuery.open(scene, method), text, out, mode=mode, all_parts=all_parts, grow=grow)
    grown = f" (the answer's {rec['answer_gaussians']} taken whole)" if grow else ""
    typer.echo(f"{mode} '{text}' (score {rec['presence']['score']:.2f}): {rec['selected']} Gaussians selected{grown}, "
               f"{rec['gaussians_before']} -> {rec['gaussians_after']} in {rec['out']}")
    typer.echo(f"fields cut to match: {', '.join(rec['fields']) or 'none'}"
               + "".join(f"; left out {m}: {why}" for m, why in rec["fields_left_out"].items()))
    typer.echo(f"before/after: {Path(rec['out']) / 'renders'}/edit_*.png")


@app.command()
def serve(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs a token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free one)."),
    token: str = typer.Option(None, "--token", envvar="FMSPLAT_TOKEN", show_envvar=True,
                              help="Bearer token every request must carry (required beyond loopback)."),
    method: str = typer.Option(None, "--method", "-m", help="Field method (default: the newest fitted one)."),
    space: str = typer.Option(None, "--space", help="Default language-aligned space (default: the field's first)."),
    max_renders: int = typer.Option(2, "--max-renders", help="Renders running or waiting at once; more get 503.", callback=_range(1, 64)),
    edits: str = typer.Option(None, "--edits", help="Folder where POST /edit writes new scenes (default: SCENE.edits/ beside SCENE)."),
) -> None:
    """A JSON HTTP API over the scene: /query, /render, /select, /edit, /inventory, /scene, /health (OpenAPI page: /docs)."""
    from fmsplat.apps.server import Limits, check_bind, serve as run_server

    check_bind(host, token)
    if max_renders < 1:
        raise typer.BadParameter("--max-renders must be at least 1")
    typer.echo(f"fmsplat serve: loading {scene} ...", err=True)
    run_server(scene, host=host, port=port, token=token, method=method, space=space,
               limits=Limits(max_renders=max_renders), edits=edits)


@app.command()
def view(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on: loopback only (viser has no authentication; tunnel to it from afar)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="TCP port of the viewer page."),
    method: str = typer.Option(None, "--method", "-m", help="Field method (default: the newest fitted one)."),
    space: str = typer.Option(None, "--space", help="Language-aligned space to query (default: the field's first)."),
    out: str = typer.Option(None, "--out", "-o", help="Folder for the 'Save selection' PLY files (default: SCENE/selections/)."),
) -> None:
    """A web viewer (viser): orbit the Gaussians, type a phrase, see the answer in place, save the object as PLY."""
    from fmsplat.apps.viewer import run_viewer

    run_viewer(scene, host=host, port=port, method=method, space=space, out=out)


@app.command("eval")
def eval_cmd(
    scene: str = typer.Argument(..., help="Scene directory with a fitted field (fmsplat fit)."),
    data: str = typer.Option(None, "--data", help="Labelled dataset (labels/, objects.json; default: the scene's)."),
    method: str = typer.Option(None, "--method", "-m", help="Field method (default: the newest fitted one)."),
    space: str = typer.Option(None, "--space", help="Language-aligned space to query (default: the field's first)."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: SCENE/eval/<method>/, or <method>-<space>/ with --space)."),
    render_scale: float = typer.Option(1.0, "--render-scale", help="Render the field at this fraction of the label size.", callback=_range(0, 8, above=True)),
    no_panels: bool = typer.Option(False, "--no-panels", help="Skip the per-query PNG panels."),
    compare: list[str] = typer.Option([], "--compare", help="Other eval.json files (or folders) to put in the comparison table."),
    latency_repeats: int = typer.Option(5, "--latency-repeats", help="Timed relevancy maps for the latency median (0: skip).", callback=_range(0, 1000)),
    ray: str = typer.Option(None, "--ray", envvar="FMSPLAT_RAY_ADDRESS", show_envvar=True,
                            help="Score the labelled views (and extract their teacher features) per view: " + RAY_HELP),
    workers: int = typer.Option(0, "--workers", min=0, help="--ray: workers (0: one per CPU of the cluster)."),
) -> None:
    """Score a fitted field (LERF localisation, LangSplat mIoU, 3D, feature fidelity, PSNR, latency) and the 2D teacher."""
    from fmsplat.eval import evaluate_scene, format_comparison, load_result
    from fmsplat.parallel import resolve_address

    r = evaluate_scene(scene, data=data, method=method, out_dir=out, panels=not no_panels, render_scale=render_scale,
                       latency_repeats=latency_repeats, space=space, ray=resolve_address(ray), workers=workers or None)
    others = [load_result(c) for c in compare]
    typer.echo(format_comparison([r, *others]))
    typer.echo(f"written: {r['out_dir']}/eval.json, eval.md" + ("" if no_panels else f", {len(r['panels'])} panels"))


if __name__ == "__main__":
    app()
