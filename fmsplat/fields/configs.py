"""Typed, documented settings of every field method and their named presets; torch-free (`fmsplat fit
--help` lists them). A field's type, docstring and range come from `setting(...)`; construction checks
and normalises every field; `parse_opts` reads `--opt KEY=VALUE` by the declared type. Presets:
`paper` (published) and `cpu` (minutes on 2 cores); the CLI picks one for the device (`default_preset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal

from fmsplat import config as settings
from fmsplat.config import Settings, setting
from fmsplat.errors import SceneError


class FieldError(SceneError):
    """A scene or field directory that cannot be used as asked (missing file, wrong method, bad config)."""


class ConfigError(FieldError, settings.ConfigError):
    """A field setting that does not parse, is unknown, or lies outside its allowed values."""


@dataclass
class FitConfig(Settings):
    """Base of every method's settings: typed, range-checked fields (fmsplat.config)."""

    method: ClassVar[str] = ""
    error: ClassVar[type[Exception]] = ConfigError

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.label = f"{cls.method} config"


# ------------------------------------------------------------------------------------------ distill
@dataclass
class DistillConfig(FitConfig):
    """Distillation baseline (the Feature-3DGS / LangSplat family)."""

    method: ClassVar[str] = "distill"
    steps: int = setting(800, "optimisation steps, one training view each", ge=0, resume_free=True)
    dim: int = setting(32, "per-Gaussian feature dimension per space (Feature-3DGS: 128, LangSplat: 3)", ge=1)
    lr_features: float = setting(2e-2, "Adam learning rate of the per-Gaussian features", gt=0)
    lr_decoder: float = setting(1e-3, "Adam learning rate of the linear decoders", gt=0)
    render_scale: float = setting(1.0, "render at this fraction of the image size before pooling to the teacher grid",
                                       gt=0, le=4)
    warm_start: bool = setting(True, "start the latents from the lifted features (fit --method lift: seconds, no "
                                     "steps) instead of zero (false: the published cold start)")
    mse_weight: float = setting(1.0, "loss = (1 - cos) + mse_weight * relative MSE", ge=0)
    min_alpha: float = setting(0.5, "teacher cells with less rendered coverage are left out of the loss", ge=0, le=1)
    checkpoint_every: int = setting(200, "steps between checkpoints (SCENE/fields/distill/checkpoint.pt)",
                                         ge=1, resume_free=True)
    seed: int = setting(0, "view order")
    torch_threads: int = setting(1, "torch intra-op threads while fitting (0: unchanged; one is faster here: small "
                                    "per-step tensors compete with the rasterizer's threads)", ge=0, resume_free=True)


# ------------------------------------------------------------------------------------------ lift
@dataclass
class LiftConfig(FitConfig):
    """Training-free lifting (the idea of Occam's LGS, Cheng et al. 2024): each Gaussian's feature is the
    mean of the teacher features of the pixels it renders to, weighted by its blending weight there,
    over every training view; one forward pass of the rasterizer's adjoint per view, no optimisation."""

    method: ClassVar[str] = "lift"
    dim: int = setting(32, "per-Gaussian latents per space: the teacher's top-`dim` principal components (0: the "
                           "full feature, for small scenes: N x D floats per space)", ge=0)
    render_scale: float = setting(0.25, "lift at this fraction of the image size (teacher grids are coarser still; "
                                        "bench/README.md, 'Fields in seconds')", gt=0, le=4)
    normalize: bool = setting(False, "average unit-length teacher features (each cell's direction counts alike) "
                                     "instead of raw ones (bench/README.md, 'Fields in seconds')")
    min_weight: float = setting(1e-3, "Gaussians whose blending weight over all views sums to less keep the mean "
                                      "feature (latent zero): they are never seen", ge=0)
    torch_threads: int = setting(0, "torch intra-op threads while lifting (0: unchanged)", ge=0, resume_free=True)
    ray: str = setting("", "Ray cluster for extraction and lifting, one task per view (fmsplat.parallel): 'local' "
                           "starts one on this machine, else an address such as 10.0.0.5:6379; empty: this process",
                       resume_free=True)
    workers: int = setting(0, "Ray workers (0: one per CPU of the cluster)", ge=0, resume_free=True)


# ------------------------------------------------------------------------------------------ fmgs
PAPER_STEPS = 4200
PAPER_WARMUP = 2500


@dataclass
class FMGSConfig(FitConfig):
    """FMGS (Zuo et al. 2024): hash grid at the Gaussian centres, language and alignment heads.
    Defaults are the paper's (official code) unless a field says otherwise."""

    method: ClassVar[str] = "fmgs"
    steps: int = setting(PAPER_STEPS, "feature-field steps, one training view each (paper: 4,200 after 30k 3DGS "
                                      "steps); the learning-rate schedule and warm-up scale with it", ge=0)
    pyramid: bool = setting(True, "language targets from the FMGS hybrid multi-scale pyramid (false: the plain dense "
                                  "map; ablation)")
    pyramid_tile_input: int = setting(0, "pixels each pyramid tile is resized to before encoding (0: the model's input "
                                         "size, 224, as the paper; >= 8 otherwise)", ge=0)
    pixel_align: bool = setting(True, "add the pixel-alignment loss after the warm-up (false: ablation)")
    grids: tuple[tuple[int, int, int], ...] = setting(((12, 16, 128), (12, 128, 512)),
                                                      "hash grids as (levels, min resolution, max resolution)")
    log2_table: int = setting(19, "hash table size: 2^log2_table rows per level", ge=1, le=30)
    grid_features: int = setting(8, "features per level (2 grids x 12 levels x 8 = 192)", ge=1)
    contraction: Literal["inf", "l2"] = setting("inf", "Mip-NeRF 360 contraction norm (inf: the scene box stays "
                                                       "uncontracted)")
    bounds_quantile: float = setting(0.01, "scene box = per-axis [q, 1-q] quantiles of the feature Gaussians' centres",
                                           ge=0, le=0.5)
    bounds_margin: float = setting(0.1, "the box widened by this fraction of its size on each side (ours)", ge=0)
    min_opacity: float = setting(0.25, "only Gaussians with opacity above this carry features", ge=0, le=1)
    hidden: int = setting(256, "width of both heads", ge=1)
    language_layers: int = setting(4, "hidden layers of the language head (paper: 4 x 256, ReLU)", ge=1)
    align_layers: int = setting(1, "hidden layers of the alignment head (paper: 1 x 256)", ge=1)
    lam: float = setting(0.2, "λ: loss = (1 - λ)·MSE(alignment) + λ·Huber(language)", ge=0, le=1)
    huber_delta: float = setting(1.25, "Huber δ of the language loss", gt=0)
    pixel_align_weight: float = setting(0.01, "weight of the pixel-alignment loss", ge=0)
    pixel_align_start: float = setting(PAPER_WARMUP / PAPER_STEPS, "fraction of the steps before pixel alignment "
                                                                   "switches on (2,500 of 4,200)", ge=0, le=1)
    optimizer: Literal["radam", "adam"] = setting("radam", "radam (paper) or adam: RAdam's rectification damps its "
                                                           "first ~1,000 steps, slow for a few hundred")
    eps: float = setting(1e-15, "optimiser ε (Instant-NGP's): hash-table gradients are ~1e-9 or less", gt=0)
    lr: float = setting(5e-3, "learning rate at the first step (hash tables and heads)", gt=0)
    lr_final: float = setting(2e-3, "... decayed exponentially to this at the last step", gt=0)
    render_scale: float = setting(0.5, "features are rendered at this fraction of the image size (paper: half)",
                                       gt=0, le=4)
    loss_grid: Literal["alignment", "own"] = setting("alignment", "alignment: both losses on the alignment map's grid "
                                                                  "(paper); own: each on its teacher's grid")
    warm_start: bool = setting(True, "pre-fit the hash grid and heads, before any render, to the lifted features "
                                     "at the feature Gaussians' centres (fields.lift; false: zero tables, published)")
    warm_steps: int = setting(200, "Adam steps of that pre-fit (batches of 2,048 Gaussians; no rendering)", ge=0)
    checkpoint_every: int = setting(500, "steps between checkpoints (SCENE/fields/fmgs/checkpoint.pt)",
                                         ge=1, resume_free=True)
    seed: int = setting(0, "head initialisation and view order")

    def check(self) -> list[str]:
        problems = []
        if 0 < self.pyramid_tile_input < 8:
            problems.append(f"pyramid_tile_input must be 0 (the model's input size) or >= 8, got "
                            f"{self.pyramid_tile_input}")
        if not self.grids:
            problems.append("grids: at least one grid")
        for levels, lo, hi in self.grids:
            if levels < 1 or lo < 1 or hi < lo:
                problems.append(f"grid ({levels}, {lo}, {hi}): need levels >= 1 and 1 <= min_res <= max_res")
        return problems

    @property
    def resolutions(self) -> list[int]:
        return [r for levels, lo, hi in self.grids for r in geometric_resolutions(levels, lo, hi)]


def geometric_resolutions(levels: int, min_res: int, max_res: int) -> list[int]:
    """Instant-NGP's level resolutions: floor(min_res · b^l), b = (max_res / min_res)^(1/(levels-1))."""
    if levels < 1 or min_res < 1 or max_res < min_res:
        raise ValueError(f"need levels >= 1 and 1 <= min_res <= max_res, got {levels}, {min_res}, {max_res}")
    if levels == 1:
        return [int(min_res)]
    b = math.exp((math.log(max_res) - math.log(min_res)) / (levels - 1))
    # the small epsilon keeps exact powers (the last level = max_res) from rounding down
    return [int(math.floor(min_res * b**level + 1e-6)) for level in range(levels)]



# ------------------------------------------------------------------------------------------ m3
# Paper (official code) per-model query dims and thresholds; the embedded models take those of their roles
# (effnet: CLIP's, effnet-mid: DINOv2's, effnet-labels: LLaMA3's; bench/README.md, "Fields: per-step cost and M3
# memory banks").
PAPER_SLICES = {"clip": 16, "siglip": 32, "dinov2": 32, "seem": 16, "llama3": 32, "llamav": 32}
PAPER_TAUS = {"clip": 0.80, "siglip": 0.85, "dinov2": 0.75, "seem": 1.00, "llama3": 1.00, "llamav": 0.60}


@dataclass
class M3Config(FitConfig):
    """M3 (Zou et al., ICLR 2025): memory banks, principal queries, Gaussian memory attention. Defaults
    follow the paper / official code except where a field says otherwise."""

    method: ClassVar[str] = "m3"
    steps: int = setting(2000, "optimisation steps, one training view each (official: 30,000 joint iterations on a "
                               "GPU)", ge=0, resume_free=True)
    query_dim: int = setting(160, "principal-query budget per Gaussian (paper: 160 for six models); the slices of the "
                                  "models in use must fit in it, and only those are stored", ge=1)
    slice_dims: dict[str, int] = setting({"effnet": 16, "effnet-mid": 32, "effnet-labels": 32, "dino": 32, **PAPER_SLICES},
                                         "query dims per model (alias or family)", ge=1)
    default_slice: int = setting(32, "query dims of a model not listed in slice_dims", ge=1)
    taus: dict[str, float] = setting({"effnet": 0.80, "effnet-mid": 0.75, "effnet-labels": 0.99, "dino": 0.75, **PAPER_TAUS},
                                     "Algorithm 1 similarity thresholds per model (alias or family)", gt=0, le=1)
    default_tau: float = setting(0.80, "threshold of a model not listed in taus", gt=0, le=1)
    bank_method: Literal["algorithm1", "fast"] = setting("algorithm1", "algorithm1 (official, O(P^2)) or fast "
                                                                       "(streaming greedy, full cover)")
    temperature: float = setting(0.05, "softmax temperature of the memory attention", gt=0)
    learn_projection: bool = setting(False, "train W_m (official: a fixed random projection)")
    projection_init: Literal["random", "pca"] = setting(
        "random", "W_m's rows: random N(0, 1) (official) or the bank's top c_m principal directions (uncentred, "
                  "scaled to the random rows' norm sqrt(D)): through random rows a small query sees little of the "
                  "bank's energy and the attention stays flat (bench/README.md, 'M3's projection')")
    lr_queries: float = setting(5e-4, "Adam learning rate of the principal queries (initialised N(0, 1))", gt=0)
    lr_projection: float = setting(5e-4, "Adam learning rate of W_m when learn_projection", gt=0)
    warm_start: bool = setting(False, "pre-fit each Gaussian's queries, before any render, so that its attention "
                                      "over the bank reproduces its lifted feature (fields.lift); off as published, on "
                                      "in the cpu preset, with projection_init=pca (bench/README.md, 'M3's projection')")
    warm_steps: int = setting(100, "Adam steps of that pre-fit (batches of 4,096 Gaussians; no rendering)", ge=0)
    warm_dim: int = setting(64, "principal components per model in the lifted targets of the pre-fit", ge=1)
    n_points: int = setting(2000, "random points per view and model in the feature loss", ge=1)
    feature_weight: float = setting(0.5, "per-model loss weight: feature_weight * ((1 - cos) + MSE)", ge=0)
    joint: bool = setting(False, "also fine-tune the Gaussians with the RGB loss (official: joint)")
    ssim_weight: float = setting(0.2, "RGB loss (joint only): (1 - w) L1 + w (1 - SSIM)", ge=0, le=1)
    render_scale: float = setting(1.0, "render the training views at this fraction of their size", gt=0, le=4)
    checkpoint_every: int = setting(500, "steps between checkpoints (SCENE/fields/m3/checkpoint.pt)",
                                         ge=1, resume_free=True)
    seed: int = setting(0, "queries, projections, view order and sample points")
    max_block_mb: int = setting(256, "memory budget of one similarity / attention block (MiB)", ge=1, resume_free=True)
    query_top_k: int = setting(0, "relevancy maps and 3D answers attend over each pixel's (Gaussian's) top-k bank "
                                  "entries only (0: the whole bank, exact): products then cost k and k^2, not D and "
                                  "K x D; an approximation (bench/README.md, 'M3 at query time'), so it is off by "
                                  "default", ge=0, resume_free=True)
    ray: str = setting("", "Ray cluster for extraction and the Algorithm 1 banks' similarity chunks (fmsplat.parallel): "
                           "'local' starts one on this machine, else an address; empty: this process",
                       resume_free=True)
    workers: int = setting(0, "Ray workers (0: one per CPU of the cluster)", ge=0, resume_free=True)
    query_scale: float = setting(0.25, "relevancy maps attend at this fraction of the map's resolution (the "
                                       "paper attends at the teacher's grid), then upsample; 1: every pixel",
                                 gt=0, le=1, resume_free=True)
    query_rank: int = setting(64, "squared norms of attended features in relevancy maps through the bank's top-r "
                                  "principal directions (0: exact, K x D per pixel)", ge=0, resume_free=True)
    torch_threads: int = setting(0, "torch intra-op threads while fitting (0: unchanged; M3's steps are attention "
                                    "matmuls, faster with torch's threads)", ge=0, resume_free=True)


# ------------------------------------------------------------------------------------------ presets
CONFIGS: dict[str, type[FitConfig]] = {"distill": DistillConfig, "lift": LiftConfig, "fmgs": FMGSConfig,
                                       "m3": M3Config}

# preset -> method -> overrides of the dataclass defaults (the `paper` settings); cpu: bench/README.md, "Feature fields"
# The method `fmsplat fit` and `fmsplat demo` fit when none is named: the fastest within noise of the best
# measured quality (bench/README.md, "Which field by default"). Lifting needs no optimisation and localised
# within a query of the 800-step distillation on the bench room in 5 s against 224 s; FMGS localises more
# but needs its multi-scale pyramid teacher (minutes on 2 cores).
DEFAULT_METHOD = "lift"

PRESETS: dict[str, dict[str, dict]] = {
    "paper": {"distill": {}, "lift": {}, "fmgs": {}, "m3": {}},
    "cpu": {
        "distill": {},
        "lift": {},
        "fmgs": dict(pyramid_tile_input=96, render_scale=0.25, optimizer="adam", steps=1200),
        "m3": dict(render_scale=0.5, steps=800, lr_queries=0.05, projection_init="pca", warm_start=True),
    },
}
PRESET_DOCS = {"paper": "the published settings (GPU-sized: hours on a CPU)",
               "cpu": "what fits a 2-core CPU in minutes (bench/README.md, 'Feature fields')"}


def config_class(method: str) -> type[FitConfig]:
    if method not in CONFIGS:
        raise FieldError(f"unknown method '{method}'; choose from {sorted(CONFIGS)}")
    return CONFIGS[method]


def default_preset() -> tuple[str, str]:
    """(preset, why): paper on a CUDA machine, cpu otherwise."""
    import torch

    return ("paper", "a CUDA device is present") if torch.cuda.is_available() else ("cpu", "no CUDA device")


def make_config(method: str, preset: str | None = "paper", overrides: dict | None = None,
                config: FitConfig | None = None) -> FitConfig:
    """The settings of `method`: `config`, else the `preset`'s, with `overrides` applied and checked."""
    cls = config_class(method)
    if config is None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        config = cls(**PRESETS[preset][method])
    elif not isinstance(config, cls):
        raise ConfigError(f"{method}: config is a {type(config).__name__}, expected {cls.__name__}")
    overrides = overrides or {}
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"{method}: unknown config field(s) {unknown}; known: {known}")
    return replace(config, **overrides)


def parse_opts(method: str, pairs: list[str]) -> dict:
    """--opt KEY=VALUE pairs -> {field: value} read by each field's declared type (fmsplat.config.parse_pairs)."""
    return settings.parse_pairs(config_class(method), pairs, "--opt", owner=method)


def settings_help() -> str:
    """The presets and every method's settings (name, type, paper default, cpu preset's if it differs,
    doc), for `fmsplat fit --help`."""
    lines = ["Presets (--preset): " + "; ".join(f"{k}: {v}" for k, v in PRESET_DOCS.items()) + ".",
             "Settings (--opt KEY=VALUE; NAME (type; paper default, cpu preset if it differs): what it does):"]
    for method, cls in CONFIGS.items():
        lines += ["", f"{method}:", *settings.settings_lines(cls, PRESETS["cpu"][method], "cpu")]
    return "\n".join(lines)


__all__ = ["CONFIGS", "DEFAULT_METHOD", "ConfigError", "DistillConfig", "FMGSConfig", "FieldError", "FitConfig", "LiftConfig", "M3Config",
           "PRESETS",
           "PRESET_DOCS", "config_class", "default_preset", "settings_help", "make_config", "parse_opts", "setting"]
