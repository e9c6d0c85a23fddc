"""The fit loop of every field method, on the engine (fmsplat.engine: generator, progress bar, atomic
checkpoints, the resume check, timing); here: the view order, observers and the summary.

A method gives its optimizer, `loss(step, view, generator)` (one step's loss on training view `view`
and values to report; extra sampling draws from the same generator, so a resumed run continues the
same sequence), `state()` and `load(state)` (what a checkpoint holds besides optimizer and generator).
A checkpoint (SCENE/fields/<method>/checkpoint.pt, every `checkpoint_every` steps) records the config
fields that are not `resume_free` and the scene (`scene_identity`); `resume=True` continues it only
when both match, and names what differs otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from fmsplat.engine import Run, optimise, torch_threads
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


def run_fit(*, method: str, scene_dir, config: FitConfig, scene: dict, views: list[int],
            optimizer: torch.optim.Optimizer, loss: Callable, state: Callable[[], dict],
            load: Callable[[dict], None], resume: bool = False, progress: bool = True, field=None,
            sync: Callable[[], None] | None = None) -> dict:
    """Run `config.steps` steps on the engine (see the module docstring); returns the loop's part of the
    summary: steps, fit_seconds, seconds_per_step, resumed_from_step, final (the last step's values).
    `field` is what observers see; `sync()`, when given, writes trainable state kept outside it back
    before they do."""
    run = Run(name=method, steps=config.steps, checkpoint=Workspace(scene_dir).field_checkpoint(method),
              identity={"config": config.resume_identity(), "scene": scene}, seed=config.seed,
              checkpoint_every=config.checkpoint_every, resume=resume, progress=progress, error=FieldError)

    def restore(saved: dict) -> None:
        load(saved["state"])
        optimizer.load_state_dict(saved["optimizer"])

    run.restore(restore)
    train = torch.tensor(views)
    observers = list(OBSERVERS) if field is not None else []

    def observe(done: int) -> None:
        if observers and sync is not None:
            sync()
        for fn in observers:
            fn(method, field, done)

    def step(i: int) -> dict:
        view = int(train[torch.randint(len(train), (1,), generator=run.generator)])
        value, parts = loss(i, view, run.generator)
        optimise(optimizer, value)
        observe(i + 1)
        return {"loss": value.item(), **parts}

    observe(run.start)
    last = run.loop(step, lambda: {"state": state(), "optimizer": optimizer.state_dict()})
    return {"steps": config.steps, "fit_seconds": round(run.seconds, 2),
            "seconds_per_step": round(run.session_seconds / max(config.steps - run.start, 1), 4),
            "resumed_from_step": run.start or None, "final": last or None}


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


__all__ = ["CHECKPOINT", "OBSERVERS", "finish", "fit_entry", "observing", "run_fit", "scene_identity"]
