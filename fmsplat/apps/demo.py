"""`fmsplat demo`: the whole pipeline on the embedded default, offline, with no arguments.

    labelled synthetic room  ->  3DGS  ->  dense features  ->  feature field  ->  evaluation  ->  report

Every stage writes into one work directory and is skipped when its output is already complete, so
an interrupted demo continues where it stopped (`fmsplat demo` again). The report directory holds
README.md (tables and pictures), eval.json per method and the evaluation panels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from fmsplat import __version__, atomic
from fmsplat.errors import UserInputError
from fmsplat.fields.configs import DEFAULT_METHOD  # lift: bench/README.md, "Which field by default"
from fmsplat.workspace import Workspace

BASELINE = "distill"


@dataclass
class DemoConfig:
    preset: str = "bench"  # synthetic scene preset: bench (8 objects, 72 views) or tiny (CI)
    seed: int = 0
    train_steps: int | None = None  # 3DGS steps (None: per preset)
    max_gaussians: int | None = None  # densification cap (None: per preset)
    methods: tuple[str, ...] = field(default_factory=lambda: (DEFAULT_METHOD,))
    fit_steps: int | None = None  # field steps (None: the field preset's)
    fit_preset: str = "cpu"  # field settings (fmsplat.fields.configs.PRESETS): cpu fits 2 cores in minutes
    models: tuple[str, ...] | None = None  # extractors (None: the method's default)


# 3DGS budget per preset: enough for clean geometry at the preset's resolution on 2 cores. The
# demo keeps the 3DGS strategy its field figures were measured on (bench/README.md "Feature
# fields"); the trainer's default, MCMC, scores 24.1 dB held out on the bench room at 1,000 steps
# in about the time 3DGS takes for 1,500 (bench/README.md "Reconstruction").
_TRAIN = {"tiny": dict(steps=300, max_gaussians=12_000, sh_degree=1, strategy="3dgs"),
          "bench": dict(steps=1500, max_gaussians=60_000, sh_degree=2, strategy="3dgs")}


def _stage(log: list, name: str, fn, progress: bool):
    start = time.perf_counter()
    if progress:
        print(f"[fmsplat demo] {name} ...", flush=True)
    result = fn()
    seconds = round(time.perf_counter() - start, 2)
    log.append({"stage": name, "seconds": seconds})
    if progress:
        print(f"[fmsplat demo] {name}: {seconds} s", flush=True)
    return result


def run_demo(work_dir="fmsplat-demo", config: DemoConfig | None = None, progress: bool = True) -> Path:
    """Run (or resume) the demo in `work_dir`; returns the report directory."""
    from fmsplat.eval import evaluate_scene, format_comparison
    from fmsplat.fields import fit_field
    from fmsplat.fields.configs import PRESETS
    from fmsplat.reconstruct import TrainConfig, train_gaussians
    from fmsplat.scene.synthetic import make_scene

    cfg = config or DemoConfig()
    if cfg.preset not in _TRAIN:
        raise UserInputError(f"demo preset must be one of {sorted(_TRAIN)}, got {cfg.preset!r}")
    work = Path(work_dir)
    data_dir, scene_dir, report = work / "data", work / "scene", work / "report"
    log: list[dict] = []

    def scene_stage():
        if (data_dir / "transforms.json").is_file() and (data_dir / "objects.json").is_file():
            return data_dir
        return make_scene(data_dir, preset=cfg.preset, seed=cfg.seed, overwrite=data_dir.exists())

    _stage(log, f"labelled scene ({cfg.preset})", scene_stage, progress)

    train_kw = dict(_TRAIN[cfg.preset])
    if cfg.train_steps is not None:
        train_kw["steps"] = cfg.train_steps
    if cfg.max_gaussians is not None:
        train_kw["max_gaussians"] = cfg.max_gaussians

    def train_stage():
        ws = Workspace(scene_dir)
        if ws.is_scene() and ws.metrics_json.is_file():
            return json.loads(ws.metrics_json.read_text())
        return train_gaussians(data_dir, scene_dir, TrainConfig(seed=cfg.seed, **train_kw), resume=True,
                               progress=progress)

    train_metrics = _stage(log, "3DGS training", train_stage, progress)

    results = {}
    for method in cfg.methods:
        def fit_stage(method=method):
            if method in Workspace(scene_dir).saved_methods():
                return None
            overrides = {} if cfg.fit_steps is None else {"steps": cfg.fit_steps}
            return fit_field(scene_dir, method, models=list(cfg.models) if cfg.models else None, resume=True,
                             progress=progress, preset=cfg.fit_preset, **overrides)

        _stage(log, f"features + {method} field", fit_stage, progress)
        results[method] = _stage(
            log, f"evaluation ({method})",
            lambda method=method: evaluate_scene(scene_dir, method=method, out_dir=report / method, progress=progress),
            progress)

    table = format_comparison(list(results.values()))
    budgets = [f"{m}: " + ", ".join(f"{k}={v}" for k, v in PRESETS[cfg.fit_preset][m].items())
               for m in cfg.methods if PRESETS[cfg.fit_preset].get(m)]
    budget_lines = ([f"Field settings: the `{cfg.fit_preset}` preset (`fmsplat.fields.configs.PRESETS`; `--fit-steps` "
                     f"replaces the step counts): {'; '.join(budgets)}.", ""] if budgets else [])
    lines = [
        "# fmsplat demo report",
        "",
        f"fmsplat {__version__}; preset `{cfg.preset}` (seed {cfg.seed}); embedded models (EfficientNet-Lite0 "
        "dense features, MiniLM text), offline, CPU.",
        "",
        f"3DGS: {train_metrics.get('num_gaussians')} Gaussians, held-out PSNR "
        f"{train_metrics.get('test', {}).get('psnr', float('nan')):.2f} dB.",
        "",
        "## Open-vocabulary queries on the labelled held-out views",
        "",
        table,
        "",
        *budget_lines,
        "Rows: `teacher` is the 2D extractor run directly on each held-out photo (the reference a 3D "
        "method is compared with); the others render the fitted 3D field. Panels per query are in "
        "each method's folder (image | relevancy | prediction vs ground truth).",
        "",
        "## Stages",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {s['stage']} | {s['seconds']} |" for s in log],
        "",
        f"Work directory: `{work.resolve()}` (run `fmsplat demo --out {work}` again to resume or re-evaluate).",
        "",
    ]
    atomic.write_text(report / "README.md", "\n".join(lines))
    atomic.write_json(report / "demo.json", {"config": {k: (list(v) if isinstance(v, tuple) else v)
                                                        for k, v in cfg.__dict__.items()},
                                             "stages": log, "train": train_metrics, "results": results})
    return report


__all__ = ["DemoConfig", "run_demo", "DEFAULT_METHOD"]
