"""One fit loop for every field method: generator, view order, progress bar, atomic checkpoints, one
resume check, timing and the summary.

A method gives its optimizer, `loss(step, view, generator)` (one step's loss on training view `view`
and values to report; extra sampling draws from the same generator, so a resumed run continues the
same sequence), `state()` and `load(state)` (what a checkpoint holds besides optimizer and generator).
A checkpoint (SCENE/fields/<method>/checkpoint.pt, every `checkpoint_every` steps) records the config
fields that are not `resume_free` and the scene (`scene_identity`); `resume=True` continues it only
when both match, and names what differs otherwise.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from fmsplat import atomic
from fmsplat.fields.base import torch_threads
from fmsplat.fields.configs import FieldError, FitConfig, make_config
from fmsplat.workspace import CHECKPOINT, Workspace

# Callables (method, field, steps done) run after every step of every fit (benchmarks snapshot fields
# mid-run with them: one run gives the quality at several step counts); see `observing`.
OBSERVERS: list[Callable] = []


@contextlib.contextmanager
def observing(fn: Callable):
    """Run `fn(method, field, steps_done)` after every step of the fits inside the block (and once
    with steps_done = 0 before the first) for methods that pass their field to `run_fit`."""
    OBSERVERS.append(fn)
    try:
        yield
    finally:
        OBSERVERS.remove(fn)


def scene_identity(bundle, spaces, **extra) -> dict:
    """A scene for a checkpoint: its Gaussians (count, geometry digest), feature spaces, training views, extras."""
    g = bundle.gaussians
    return {"gaussians": len(g), "geometry": g.fingerprint(), "spaces": [s.key for s in spaces],
            "train_views": [bundle.view_name(i) for i in bundle.dataset.train_indices], **extra}


def check_identity(path: Path, saved: dict, now: dict) -> None:
    """Refuse to resume from a checkpoint of another run, naming what differs."""
    diffs = []
    for part in ("config", "scene"):
        a, b = saved.get(part, {}), now[part]
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                shown = (a.get(k), b.get(k)) if k not in ("train_views", "geometry") else ("...", "...")
                diffs.append(f"{part} {k}: {shown[0]!r} -> {shown[1]!r}")
    if diffs:
        raise FieldError(f"{path}: cannot resume, it was written by a run with different settings or another scene "
                         f"({'; '.join(diffs)}); resume with the original settings or delete it to start afresh")


def run_fit(*, method: str, scene_dir, config: FitConfig, scene: dict, views: list[int],
            optimizer: torch.optim.Optimizer, loss: Callable, state: Callable[[], dict],
            load: Callable[[dict], None], resume: bool = False, progress: bool = True, field=None,
            sync: Callable[[], None] | None = None) -> dict:
    """Run `config.steps` steps (see the module docstring); returns the loop's part of the summary:
    steps, fit_seconds, seconds_per_step, resumed_from_step, final (the last step's values). `field` is
    what observers see; `sync()`, when given, writes trainable state kept outside it back before they do."""
    ckpt = Workspace(scene_dir).field_checkpoint(method)
    identity = {"config": config.resume_identity(), "scene": scene}
    generator = torch.Generator().manual_seed(config.seed)
    start, elapsed = 0, 0.0
    if resume and ckpt.is_file():
        try:
            saved = torch.load(ckpt, weights_only=True)
        except Exception as err:  # torch raises several types for damaged files; name the file
            raise FieldError(f"{ckpt}: cannot read the checkpoint ({type(err).__name__}; damaged or not a checkpoint); "
                             "delete it to start afresh") from err
        try:
            check_identity(ckpt, json.loads(saved["identity"]), identity)
            load(saved["state"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            start, elapsed = int(saved["step"]), float(saved["seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            if isinstance(err, FieldError):
                raise
            raise FieldError(f"{ckpt}: not a checkpoint of this version's {method} fit ({type(err).__name__}: "
                             f"{err}); delete it to start afresh") from err
        if progress:
            tqdm.write(f"{ckpt}: resuming at step {start} of {config.steps}")
    elif ckpt.is_file():
        warnings.warn(f"{ckpt}: an earlier run's checkpoint exists; starting afresh will replace it "
                      "(pass resume=True / --resume to continue it)", stacklevel=3)
    elif resume and progress:
        tqdm.write(f"{ckpt}: no checkpoint to resume from; starting afresh")

    train = torch.tensor(views)
    last: dict = {}
    observers = list(OBSERVERS) if field is not None else []

    def observe(done: int) -> None:
        if observers and sync is not None:
            sync()
        for fn in observers:
            fn(method, field, done)

    observe(start)
    t0 = time.perf_counter()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=method, disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        view = int(train[torch.randint(len(train), (1,), generator=generator)])
        value, parts = loss(step, view, generator)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        last = {"loss": value.item(), **parts}
        observe(step + 1)
        if step % 10 == 0:
            bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if isinstance(v, float)}, refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0 and done < config.steps:
            snapshot = {"step": done, "seconds": elapsed + time.perf_counter() - t0, "identity": json.dumps(identity),
                        "state": state(), "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
            atomic.write_with(ckpt, lambda tmp: torch.save(snapshot, tmp))
    bar.close()
    run = time.perf_counter() - t0
    return {"steps": config.steps, "fit_seconds": round(elapsed + run, 2),
            "seconds_per_step": round(run / max(config.steps - start, 1), 4), "resumed_from_step": start or None,
            "final": last or None}


def fit_entry(method: str, fit_impl: Callable) -> Callable:
    """A method's public `fit`: settings from `config`, else the preset, with overrides (make_config), then
    `fit_impl(scene_dir, models, cfg, resume, progress, bundle)` under the config's torch thread count."""
    def fit(scene_dir, models=None, config: FitConfig | None = None, resume: bool = False, progress: bool = True,
            bundle=None, preset: str = "paper", **overrides):
        cfg = make_config(method, preset, overrides, config)
        with torch_threads(getattr(cfg, "torch_threads", 0)):
            return fit_impl(scene_dir, models, cfg, resume, progress, bundle)

    fit.__doc__ = fit_impl.__doc__
    return fit


def finish(field_, scene_dir) -> None:
    """Save the fitted field and remove its checkpoint."""
    field_.eval()
    field_.save(scene_dir)
    Workspace(scene_dir).field_checkpoint(field_.method).unlink(missing_ok=True)


__all__ = ["CHECKPOINT", "OBSERVERS", "check_identity", "finish", "fit_entry", "observing", "run_fit", "scene_identity"]
