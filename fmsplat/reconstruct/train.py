"""3DGS training on posed photos: the photometric loss, SH schedule and density control of
Kerbl et al. 2023 with their schedule scaled to the number of steps, checkpoints and resume.

Entry point: `train_gaussians(data_path, out_dir, TrainConfig(...))`, or `fmsplat train`.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fmsplat import __version__, atomic
from fmsplat.errors import CheckpointError, UserInputError
from fmsplat.gaussians import GaussianModel
from fmsplat.gaussians.losses import psnr, rgb_loss, ssim
from fmsplat.reconstruct.init import INITS, initial_gaussians
from fmsplat.reconstruct.densify import DensityControl, reset_opacity
from fmsplat.reconstruct.mcmc import MCMCConfig, MCMCStrategy
from fmsplat.reconstruct.renders import evenly_spaced, write_view_panels
from fmsplat.render.rgb import render_rgb
from fmsplat.scene import SceneDataset, load_dataset
from fmsplat.workspace import GAUSSIANS_PLY, Workspace

REFERENCE_STEPS = 30_000  # the schedule of the original code is given for this many steps
STRATEGIES = ("3dgs", "mcmc")


@dataclass
class TrainConfig:
    """3DGS training settings. Learning rates, loss and the 3DGS density-control rules are the
    defaults of Kerbl et al. 2023 (their schedule scaled to `steps`); the run length, the Gaussian
    budget, the strategy, the start and the resolution are sized for a 2-core CPU and chosen by
    measurement (bench/README.md, "Reconstruction")."""

    # 1,000 steps with MCMC at 100k Gaussians: the fox (58 views at 135x240) reaches 31 dB held
    # out in about 6 minutes on 2 cores (bench/README.md, "Reconstruction").
    steps: int = 1000
    # Image downscale (8 = 1/8 resolution); None: the smallest power of two that brings every view
    # to 0.1 megapixel or less (scene.dataset.auto_downscale; the fox's 1080x1920 -> 8).
    downscale: float | None = None
    test_every: int = 8
    sh_degree: int = 3
    seed: int = 0
    background: tuple = (0.0, 0.0, 0.0)
    ssim_weight: float = 0.2
    # learning rates (means scaled by the scene extent, decayed exponentially to the final one)
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_opacities: float = 5e-2
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    # Densification strategy: "3dgs" (clone/split/prune with opacity resets, Kerbl et al. 2023)
    # or "mcmc" (relocation, growth to max_gaussians and position noise, Kheradmand et al. 2024;
    # see reconstruct/mcmc.py, whose other settings keep their defaults there). MCMC is the default:
    # on the fox it scored higher than 3DGS at every step of 1,000 from every start (31.3 against
    # 30.0 dB from triangulated points) and never spends steps after an opacity reset.
    strategy: str = "mcmc"
    # density control (3DGS: from 500 to 15000, every 100, opacity reset every 3000 of 30000)
    densify_from: float = 500 / REFERENCE_STEPS
    densify_until: float = 15_000 / REFERENCE_STEPS
    densify_every: int = 100
    reset_every: float = 3000 / REFERENCE_STEPS
    # A reset leaves every opacity at 0.01 (logit -4.6); at lr_opacities Adam needs ~100-200 steps
    # to bring the surfaces back, whatever the run length. Scaled linearly, short runs would reset
    # again before recovering (measured on the fox: 600 steps, resets every 60, PSNR stuck < 9 dB),
    # so resets are never closer than this (runs too short for that get one, see schedule()).
    min_reset_interval: int = 300
    sh_increase_every: float = 1000 / REFERENCE_STEPS
    grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    prune_opacity: float = 0.005  # opacity of dead Gaussians: pruned (3dgs), relocated (mcmc)
    max_screen_size: float = 20.0  # px, pruned after the first opacity reset
    max_world_size: float = 0.1  # x scene extent, pruned after the first opacity reset
    # 3dgs: densification stops here; mcmc: grows to it (cap_max). Sized for views of <= 0.1 MP
    # on a CPU: on the fox at 1/8, 3DGS densified to 193k by step 1000 and ran 2-3x slower per step.
    max_gaussians: int = 100_000
    # Initial Gaussians: auto (the dataset's points, else triangulated with pycolmap from the known
    # poses, else random in the view frusta), points, sfm, frustum, box (random in the camera
    # centres' box: the old default, misses scenes seen from outside; see reconstruct/init.py).
    init: str = "auto"
    init_random_points: int = 20_000
    init_opacity: float = 0.1
    checkpoint_every: int = 500
    train_eval_views: int = 8  # training views scored at the end (evenly spaced), 0: none
    # Score the held-out views every this many steps (metrics.json "curve": PSNR against steps and
    # seconds; bench/reconstruct.py prints it), 0: only at the end. Evaluation time is not counted
    # in train_seconds.
    eval_every: int = 0
    # torch's intra-op threads while training (0: leave torch's setting). The per-step tensors are
    # small and torch's OpenMP pool fights the numba rasterizer's threads: on the 2-core machine
    # one torch thread made steps 3-6x faster (numba keeps all its threads).
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"TrainConfig.steps must be >= 1, got {self.steps}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"TrainConfig.sh_degree must be in 0..3, got {self.sh_degree}")
        if self.downscale is not None and not self.downscale > 0:
            raise ValueError(f"TrainConfig.downscale must be positive, got {self.downscale}")
        if self.eval_every < 0:
            raise ValueError(f"TrainConfig.eval_every must be >= 0, got {self.eval_every}")
        if self.checkpoint_every < 1:
            raise ValueError(f"TrainConfig.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if len(tuple(self.background)) != 3:
            raise ValueError(f"TrainConfig.background must be an RGB triple, got {self.background!r}")
        self.background = tuple(float(c) for c in self.background)
        if self.init not in INITS:
            raise ValueError(f"TrainConfig.init must be one of {', '.join(map(repr, INITS))}, got {self.init!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"TrainConfig.strategy must be one of {', '.join(map(repr, STRATEGIES))}, "
                             f"got {self.strategy!r}")
        if self.strategy == "mcmc":
            if self.max_gaussians < 1:
                raise ValueError(f"TrainConfig.max_gaussians (the MCMC cap) must be >= 1, got {self.max_gaussians}")
            self.mcmc_config()  # validates the rest

    def mcmc_config(self) -> MCMCConfig:
        """The MCMC settings of this run: gsplat's defaults with the refinement iterations scaled
        to `steps`, the cap max_gaussians and the death threshold prune_opacity."""
        return MCMCConfig(cap_max=self.max_gaussians, min_opacity=self.prune_opacity).scaled(self.steps, REFERENCE_STEPS)

    def schedule(self) -> dict:
        """Step numbers of the scaled schedule, 1-based as in the original code: at iteration
        `it` (= step + 1) the SH degree is it // sh_increase_every; see is_refine_step and
        is_reset_step for density control. With strategy "mcmc": the SH schedule and MCMC's
        refinement iterations (relocate and grow after refine_start < it < refine_stop, every
        refine_every)."""
        s = self.steps
        if self.strategy == "mcmc":
            m = self.mcmc_config()
            return {"refine_start": m.refine_start_iter, "refine_stop": m.refine_stop_iter,
                    "refine_every": m.refine_every, "sh_increase_every": max(1, round(self.sh_increase_every * s))}
        # Refinement every 100 of 30k steps; short runs refine relatively 4x as often (at least
        # every 10 steps) so that densification still gets a few dozen rounds.
        every = max(10, min(self.densify_every, round(self.densify_every * s / REFERENCE_STEPS * 4)))
        until = round(self.densify_until * s)
        # An opacity reset needs several refinement rounds and ~100-200 steps to recover.
        reset = max(3 * every, self.min_reset_interval, round(self.reset_every * s))
        if 2 * reset > until:
            # Too short for spaced resets: keep one, half-way through densification. Without it
            # the floaters it clears stay, and screen/world-size pruning (after the first reset)
            # never starts: on the fox, 600 steps without a reset scored 12.9 dB held out.
            reset = max(3 * every, until // 2)
        return {
            "densify_from": max(every, round(self.densify_from * s)),
            "densify_until": until,
            "densify_every": every,
            "reset_every": reset,
            "sh_increase_every": max(1, round(self.sh_increase_every * s)),
        }


def is_refine_step(sched: dict, it: int) -> bool:
    """Clone/split/prune after iteration `it` (1-based): densify_from < it < densify_until, every
    densify_every iterations, as the original code."""
    return sched["densify_from"] < it < sched["densify_until"] and it % sched["densify_every"] == 0


def is_reset_step(sched: dict, it: int) -> bool:
    """Opacity reset after iteration `it`: every reset_every iterations, and only while a full
    interval of refinement still follows (the original's resets at 3000..12000 of 15000 all do;
    a reset just before densification ends would leave the scene transparent and unpruned)."""
    return it % sched["reset_every"] == 0 and it + sched["reset_every"] <= sched["densify_until"]


def _versions() -> dict:
    import numba

    return {"fmsplat": __version__, "torch": torch.__version__, "numba": numba.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _init_model(data: SceneDataset, cfg: TrainConfig, out_dir: Path | None = None,
                progress: bool = False) -> tuple[GaussianModel, dict]:
    """The initial Gaussians for cfg.init and what was done (scene.json's "init"); SfM work
    files go to out_dir/sfm."""
    return initial_gaussians(data, cfg.init, cfg.init_random_points, cfg.sh_degree, cfg.init_opacity,
                             seed=cfg.seed, sfm_dir=None if out_dir is None else Workspace(out_dir).sfm_dir,
                             progress=progress)


def _make_optimizer(params: dict, cfg: TrainConfig, extent: float) -> torch.optim.Adam:
    lrs = {"means": cfg.lr_means * extent, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    return torch.optim.Adam([{"params": [params[k]], "lr": lr, "name": k} for k, lr in lrs.items()], eps=1e-15)


def _means_lr(iteration: int, cfg: TrainConfig, extent: float) -> float:
    """Log-linear decay from lr_means to lr_means_final over the run, times the scene extent."""
    t = min(1.0, iteration / max(1, cfg.steps))
    return extent * math.exp((1 - t) * math.log(cfg.lr_means) + t * math.log(cfg.lr_means_final))


def _image(data: SceneDataset, i: int, device=None) -> torch.Tensor:
    """View i as a tensor sharing the dataset's cached (read-only) array: never written to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(data.image(i))
    return t if device is None else t.to(device)


def _valid(data: SceneDataset, i: int, device=None) -> torch.Tensor | None:
    """(H, W) bool of the pixels that come from the photo, or None when all do. Undistortion
    leaves a border with no photo behind it (filled with the background): it is neither
    trained on nor scored."""
    mask = data.valid_mask(i)
    if mask.all():
        return None
    t = torch.from_numpy(np.ascontiguousarray(mask))
    return t if device is None else t.to(device)


def _fill_invalid(gt: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The target with pixels outside `valid` replaced by the (detached) prediction: no loss there."""
    return gt if valid is None else torch.where(valid[..., None], gt, pred.detach())


def evaluate_views(model: GaussianModel, data: SceneDataset, indices, background) -> dict:
    """Mean PSNR / SSIM of the views `indices` rendered at the model's full SH degree, clamped
    to [0, 1], against the dataset's images (held-out views for the test score). Pixels that
    undistortion left without photo data are excluded from PSNR and count as exact in SSIM."""
    indices = [int(i) for i in indices]
    scores = []
    with torch.no_grad():
        for i in indices:
            res = render_rgb(model, data.cameras[i], model.sh_degree, background)
            pred = res.image.clamp(0, 1)
            valid = _valid(data, i, pred.device)
            gt = _fill_invalid(_image(data, i, pred.device), pred, valid)
            err = (pred - gt) ** 2
            mse = err.mean() if valid is None else err[valid].mean()
            scores.append((float(-10.0 * torch.log10(mse.clamp_min(1e-12))), float(ssim(pred, gt))))
    if not scores:
        return {"views": 0}
    arr = np.array(scores)
    return {"views": len(scores), "psnr": float(arr[:, 0].mean()), "ssim": float(arr[:, 1].mean()),
            "per_view": [{"view": data.cameras[i].name, "psnr": s[0], "ssim": s[1]} for i, s in zip(indices, scores)]}


# Fields that may change between a run and its resumption without changing the result.
_RESUME_FREE = ("checkpoint_every", "train_eval_views", "torch_threads", "eval_every")


def _config_dict(cfg: TrainConfig) -> dict:
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    out["background"] = list(out["background"])
    return out


def _data_identity(data: SceneDataset) -> dict:
    return {"path": str(Path(data.source).resolve()), "views": len(data), "downscale": data.downscale,
            "test_every": data.test_every, "train_views": [int(i) for i in data.train_indices]}


def _check_same_run(source: Path, saved_cfg: dict, saved_data: dict, cfg: TrainConfig, data: SceneDataset) -> None:
    now = _config_dict(cfg)
    diffs = [f"{k}: {saved_cfg.get(k)!r} -> {now[k]!r}" for k in now if k not in _RESUME_FREE and saved_cfg.get(k) != now[k]]
    ident = _data_identity(data)
    diffs += [f"data.{k}: {saved_data.get(k)!r} -> {ident[k]!r}" for k in ident if saved_data.get(k) != ident[k]]
    if diffs:
        raise UserInputError(f"{source}: cannot resume, the run was started with different settings ({'; '.join(diffs)}); "
                         "resume with the original settings or train into a new directory")


def _save_checkpoint(path: Path, state: dict) -> None:
    atomic.write_with(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({exc}); delete it to start afresh") from exc


def _describe_init(info: dict) -> str:
    kind = info.get("kind")
    if kind == "sfm":
        r = info["sfm"]
        return (f"{info['points']} points triangulated from {r['views']} posed views"
                + (" (cached)" if r.get("reused") else f" in {sum(r['seconds'].values()):.0f} s"))
    text = {"points": "the dataset's points", "frustum": "random points in the view frusta",
            "box": "random points in the camera box"}.get(kind, str(kind))
    return text + (f"; {info['fallback_reason']}" if info.get("fallback_reason") else "")


def _train_eval_indices(data: SceneDataset, k: int) -> list[int]:
    train = data.train_indices
    if k <= 0 or not train:
        return []
    picks = np.unique(np.linspace(0, len(train) - 1, min(k, len(train))).round().astype(int))
    return [train[j] for j in picks]


def train_gaussians(data_path, out_dir, cfg: TrainConfig | None = None, resume: bool = False,
                    progress: bool = True, data: SceneDataset | None = None) -> dict:
    """Train a 3DGS on the dataset at `data_path` (or the already loaded `data`) and write the
    scene directory `out_dir`: gaussians.ply, scene.json, metrics.json (PSNR/SSIM on held-out
    views and on a few training views). While it runs, checkpoints/train.pt is rewritten
    atomically every `cfg.checkpoint_every` steps; `resume=True` continues from it (and the
    continued run matches an uninterrupted one). Returns the metrics."""
    cfg = cfg or TrainConfig()
    threads = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    try:
        return _train(data_path, out_dir, cfg, resume, progress, data)
    finally:
        torch.set_num_threads(threads)


def _train(data_path, out_dir, cfg: TrainConfig, resume: bool, progress: bool, data: SceneDataset | None) -> dict:
    out_dir = Path(out_dir)
    ws = Workspace(out_dir)
    ckpt_path = ws.train_checkpoint
    if data is None:
        data = load_dataset(data_path, downscale=cfg.downscale, test_every=cfg.test_every, background=cfg.background)
        if cfg.downscale is None and progress:
            cam = data.cameras[0]
            tqdm.write(f"{data.source}: training at 1/{data.downscale:g} resolution ({cam.width}x{cam.height}), "
                       "chosen for this CPU; pass --downscale to change it")
    if not data.train_indices:
        raise ValueError(f"{data.source}: no training views (all {len(data)} views are held out)")
    extent = max(data.extent, 1e-3)
    sched = cfg.schedule()
    # One of the two strategies drives the Gaussian count; the other is None.
    control = mcmc = None
    if cfg.strategy == "mcmc":
        mcmc = MCMCStrategy(cfg.mcmc_config())
    else:
        control = DensityControl(0, extent, grad_threshold=cfg.grad_threshold, percent_dense=cfg.percent_dense,
                                 min_opacity=cfg.prune_opacity, max_screen_size=cfg.max_screen_size,
                                 max_world_size=cfg.max_world_size, max_gaussians=cfg.max_gaussians)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    order: list[int] = []
    loss_ema, elapsed_before, start = None, 0.0, 0

    if resume and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path)
        _check_same_run(ckpt_path, json.loads(state["config"]), json.loads(state["data"]), cfg, data)
        start = int(state["step"])
        init_info = json.loads(state.get("init", "{}"))
        params = {k: torch.nn.Parameter(v.clone()) for k, v in state["params"].items()}
        optimizer = _make_optimizer(params, cfg, extent)
        for k, s in state["optimizer"].items():
            optimizer.state[params[k]] = {key: val.clone() for key, val in s.items()}
        if control is not None:
            control.grad_accum, control.count, control.max_radii = (
                state["stats"]["grad_accum"], state["stats"]["count"], state["stats"]["max_radii"])
        rng.bit_generator.state = json.loads(state["rng"])
        generator.set_state(state["generator"])
        order = [int(i) for i in state["order"]]
        loss_ema = state["loss_ema"]
        curve = list(state.get("curve", []))
        elapsed_before = float(state["elapsed"])
        if progress:
            tqdm.write(f"{out_dir}: resuming from the checkpoint at step {start} of {cfg.steps}")
    elif resume and all(p.exists() for p in (ws.gaussians_ply, ws.metrics_json, ws.scene_json)):
        scene = ws.read_meta()
        _check_same_run(ws.scene_json, scene.get("train_config", {}), scene.get("run_data", {}), cfg, data)
        if progress:
            tqdm.write(f"{out_dir}: already trained ({cfg.steps} steps); nothing to resume")
        return json.loads(ws.metrics_json.read_text())
    else:
        if resume:
            warnings.warn(f"{out_dir}: --resume given but there is no checkpoint to resume from; starting afresh",
                          stacklevel=2)
        elif ckpt_path.exists():
            warnings.warn(f"{ckpt_path}: an earlier run's checkpoint exists; starting afresh will replace it "
                          "(pass resume=True / --resume to continue it)", stacklevel=2)
        torch.manual_seed(cfg.seed)
        model, init_info = _init_model(data, cfg, out_dir, progress)
        if progress:
            tqdm.write(f"{out_dir}: starting from {len(model)} Gaussians ({_describe_init(init_info)})")
        params = model.trainable()
        optimizer = _make_optimizer(params, cfg, extent)
        if control is not None:
            control.reset_stats(len(model))
        curve = []
    bg = torch.as_tensor(cfg.background, dtype=torch.float32)
    valid_masks: dict[int, torch.Tensor | None] = {}
    eval_seconds = 0.0

    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="3DGS", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        it = step + 1  # 1-based iteration, as the schedule of the original code counts
        if not order:
            order = [int(j) for j in rng.permutation(data.train_indices)]
        i = order.pop()
        cam = data.cameras[i]
        means_lr = _means_lr(it, cfg, extent)
        for group in optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = means_lr
        sh_active = min(cfg.sh_degree, it // sched["sh_increase_every"])

        res = render_rgb(params, cam, sh_active, bg)
        if i not in valid_masks:
            valid_masks[i] = _valid(data, i)
        gt = _fill_invalid(_image(data, i), res.image, valid_masks[i])
        loss = rgb_loss(res.image, gt, cfg.ssim_weight)
        if mcmc is not None:
            loss = loss + mcmc.regularisation(params)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if control is not None and it < sched["densify_until"]:
            control.observe(res.means2d.grad, res.radii, cam.width, cam.height)
        optimizer.step()

        if mcmc is not None:
            # Relocate and grow at refinement iterations, position noise at every one; no resets.
            mcmc.step(params, optimizer, it, means_lr, generator)
        else:
            if is_refine_step(sched, it):
                control.refine(params, optimizer, prune_large=it > sched["reset_every"], generator=generator)
            if is_reset_step(sched, it):
                reset_opacity(params, optimizer)

        loss_value = loss.item()
        loss_ema = loss_value if loss_ema is None else 0.9 * loss_ema + 0.1 * loss_value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}", psnr=f"{float(psnr(res.image.detach(), gt)):.2f}",
                            n=params["means"].shape[0], sh=sh_active)
        if cfg.eval_every and (it % cfg.eval_every == 0 or it == cfg.steps) and data.test_indices:
            t_eval = time.perf_counter()
            scores = evaluate_views(GaussianModel.from_params(params, sh_active), data, data.test_indices, cfg.background)
            eval_seconds += time.perf_counter() - t_eval
            curve.append({"step": it, "psnr": round(scores["psnr"], 3), "ssim": round(scores["ssim"], 4),
                          "gaussians": int(params["means"].shape[0]),
                          "seconds": round(elapsed_before + time.perf_counter() - t0 - eval_seconds, 2)})
        if it % cfg.checkpoint_every == 0 and it < cfg.steps:
            _save_checkpoint(ckpt_path, {
                "step": it,
                "params": {k: v.detach() for k, v in params.items()},
                "optimizer": {k: {s: optimizer.state[v][s] for s in ("exp_avg", "exp_avg_sq", "step")}
                              for k, v in params.items() if v in optimizer.state},
                # MCMC keeps no statistics: its randomness is the generator's, saved below.
                "stats": ({"grad_accum": control.grad_accum, "count": control.count, "max_radii": control.max_radii}
                          if control is not None else {}),
                "rng": json.dumps(rng.bit_generator.state),
                "generator": generator.get_state(),
                "order": list(order),
                "loss_ema": loss_ema,
                "curve": curve,
                "elapsed": elapsed_before + time.perf_counter() - t0 - eval_seconds,
                "config": json.dumps(_config_dict(cfg)),
                "data": json.dumps(_data_identity(data)),
                "init": json.dumps(init_info),
            })
    bar.close()
    train_seconds = elapsed_before + time.perf_counter() - t0 - eval_seconds

    model = GaussianModel.from_params(params, cfg.sh_degree)
    t_eval = time.perf_counter()
    metrics = {
        "test": evaluate_views(model, data, data.test_indices, cfg.background),
        "train": evaluate_views(model, data, _train_eval_indices(data, cfg.train_eval_views), cfg.background),
        "num_gaussians": len(model),
        "steps": cfg.steps,
        "resumed_from_step": start or None,
        "curve": curve,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t_eval, 2),
    }
    scene = {
        "fmsplat_scene": 1,
        "gaussians": GAUSSIANS_PLY,
        "data": {"path": str(Path(data.source).resolve()), "downscale": data.downscale, "test_every": data.test_every},
        "run_data": _data_identity(data),
        "provenance": data.provenance(),
        "train_config": _config_dict(cfg),
        "schedule": sched,
        "init": init_info,
        "scene_extent": extent,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # render | photo | error pictures of a few held-out views: a failed reconstruction shows at a glance
    panels = write_view_panels(model, data, evenly_spaced(data.test_indices, 4), ws.renders_dir / "test", cfg.background)
    metrics["panels"] = [p.relative_to(out_dir).as_posix() for p in panels]  # relative: scene dirs move
    ws.write_scene(model, scene, metrics, data)
    if ckpt_path.exists():
        ckpt_path.unlink()
    if ckpt_path.parent.is_dir() and not any(ckpt_path.parent.iterdir()):
        ckpt_path.parent.rmdir()
    return metrics


__all__ = ["TrainConfig", "evaluate_views", "train_gaussians"]
