"""M3, 3D Spatial MultiModal Memory (Zou et al., ICLR 2025): memory banks of raw foundation-model
features, low-dimensional principal queries on the Gaussians, and Gaussian memory attention.

For each model m (a feature space), the raw pixel features of all training views are reduced to a
memory bank (its principal scene components, fmsplat.fields.memory). Every Gaussian carries one
principal-query vector (``query_dim`` = 160 values in the paper, sliced per model); one rasterizer
pass renders all slices; model m's slice q_m of a pixel reads its bank as

    e = q_m W_m,   feature = softmax(cos(e, bank_m) / 0.05) @ bank_m

with W_m (c_m × D_m) drawn from N(0, 1) and kept fixed, as the official code does (the paper reads as
if it were learned: ``learn_projection=True``). A rendered feature is therefore always a convex
combination of features the model really produced, in the model's own space, so its text encoder
applies unchanged.

Training (per step one random training view): 2,000 random points in normalised image coordinates;
the rendered queries and the teacher's feature map are both sampled bilinearly there (the official
point_sample; the teacher grid is coarser than the image, so this is how Q is "resized to the
teacher's grid" in training); per model the loss is ``feature_weight · ((1 - cos) + MSE)`` over the
points whose target is non-zero (the official 0.5 weight). By default the geometry of the trained
3DGS is frozen and only the queries learn (fast on a CPU); ``joint=True`` fine-tunes the Gaussians
too (no densification) and adds the 3DGS photometric loss ``0.8·L1 + 0.2·(1 - SSIM)`` — one
rasterizer pass renders colour and queries together. The official code trains everything jointly
from scratch for 30,000 iterations.

On a CPU budget: with the paper's query learning rate 5e-4 a query moves at most ~5e-4 per step, so
a few hundred or thousand steps barely leave the N(0, 1) initialisation; short runs need a larger
rate (``--opt lr_queries=0.05``). Measured on the bench preset (bench/README.md, "Feature fields"),
400 steps at half-resolution renders: lr 5e-4 localises 26.7% of the labels (mIoU 1.8%), lr 0.05
60.0% (mIoU 33.0%). The default stays the paper's; `fmsplat demo` uses 0.05 (fmsplat.demo.FIT_BUDGET).
Memory banks: ``bank_method`` is
Algorithm 1 (official; O(P²) in the number of pixel features P) by default; ``fast`` builds an
equally tight bank (entries pairwise below tau) that covers every feature, several times faster and
in bounded memory, and grows with new views (fmsplat.fields.memory, bench/memory.py). Banks are
cached in SCENE/memory/<extractor key>.safetensors with their tau, method and views.

Embedded models (not in the paper's tables), mapped to the roles they play:

    effnet      (1280-d, language-aligned, CLIP's role)  -> 16 query dims, tau 0.80 (CLIP's)
    effnet-mid  (112-d / 40-d mid-level, DINOv2's role)  -> 32 query dims, tau 0.75 (DINOv2's)
    effnet-labels (384-d painted label embeddings, LLaMA3's role) -> 32 query dims, tau 0.99

tau: these two are not in the paper's table; they take the thresholds of the models whose roles
they play, which the bank-size/coverage trade-off on real effnet features of the synthetic bench
scene (72 views, 320x240; `python bench/memory.py --threads 1 --views 72 --taus ...`) confirms as the
knee. effnet (5,760 rows) with Algorithm 1: tau 0.6 / 0.7 / 0.8 / 0.9 keep 374 / 934 / 2,166 / 4,389
rows with a mean best cosine of a feature to its bank of 0.65 / 0.77 / 0.89 / 0.98; effnet-mid
(21,600 rows): 0.6 / 0.7 / 0.75 / 0.85 keep 827 / 3,216 / 5,824 / 14,964 rows, mean best cosine
0.60 / 0.75 / 0.82 / 0.96. Below the chosen values the bank shrinks 2-5x but a rendered feature (a
mix of bank rows) can no longer come close to the teacher; above them the bank keeps more than half
of the rows and stops compressing. The rendered features are bounded by this: choose a higher tau
for fidelity, a lower one for a smaller bank (faster rendering: attention costs K per pixel).
Overridable per model (``taus``).

The paper's language space (LLaMA3 embeddings of region captions painted into each region, tau 1.0)
is played by ``effnet-labels`` (fmsplat.foundation.effnet): every stride-32 cell holds the MiniLM
embedding of its recognised ImageNet label, text queries go through MiniLM. Its maps are piecewise
constant, so its bank is one entry per distinct label; tau is 0.99 rather than the paper's 1.00
because with 1.00 a painted vector that is an exact duplicate can still fall short of itself by
float rounding (fp16 cache, then normalisation), and Algorithm 1 then keeps every such row (see
fields.memory). It takes LLaMA3's 32 query dims.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fmsplat import atomic
from fmsplat.fields.base import (
    FeatureField,
    FieldError,
    FieldRender,
    SceneBundle,
    SpaceSpec,
    camera_at,
    open_scene,
    parse_space,
    resolve_config,
    splat,
    torch_threads,
)
from fmsplat.fields.memory import MemoryBank, flatten_views, memory_attention, nonzero_rows
from fmsplat.gaussians import GaussianModel
from fmsplat.gaussians.losses import rgb_loss
from fmsplat.render import rasterize

DEFAULT_MODELS = ("effnet", "effnet-mid", "effnet-labels")
CHECKPOINT = "checkpoint.pt"
MEMORY_DIR = "memory"

# Paper (and official code) per-model query dims and thresholds, plus the embedded models' roles.
PAPER_SLICES = "clip=16,siglip=32,dinov2=32,seem=16,llama3=32,llamav=32"
PAPER_TAUS = "clip=0.80,siglip=0.85,dinov2=0.75,seem=1.00,llama3=1.00,llamav=0.60"


@dataclass
class Config:
    """M3 settings; defaults follow the paper / official code except where a field says otherwise."""

    steps: int = 2000  # optimisation steps, one training view each (official: 30,000 joint iterations on a GPU)
    query_dim: int = 160  # principal-query budget per Gaussian (paper: 160 for six models); the slices of the models
    #                       in use must fit in it, and only those are stored
    slice_dims: str = "effnet=16,effnet-mid=32,effnet-labels=32,dino=32," + PAPER_SLICES  # query dims per model (alias or family)
    default_slice: int = 32  # query dims of a model not listed in slice_dims
    taus: str = "effnet=0.80,effnet-mid=0.75,effnet-labels=0.99,dino=0.75," + PAPER_TAUS  # Algorithm 1 similarity thresholds per model
    default_tau: float = 0.80  # threshold of a model not listed in taus
    bank_method: str = "algorithm1"  # 'algorithm1' (official, O(P^2)) or 'fast' (streaming greedy, full cover)
    temperature: float = 0.05  # softmax temperature of the memory attention
    learn_projection: bool = False  # train W_m (official: fixed random projection)
    lr_queries: float = 5e-4  # Adam learning rate of the principal queries (initialised N(0, 1))
    lr_projection: float = 5e-4  # Adam learning rate of W_m when learn_projection
    n_points: int = 2000  # random points per view and model in the feature loss
    feature_weight: float = 0.5  # per-model loss weight: feature_weight * ((1 - cos) + MSE)
    joint: bool = False  # also fine-tune the Gaussians with the RGB loss (official: joint; here off: faster on CPU)
    ssim_weight: float = 0.2  # RGB loss (joint only): (1 - w) L1 + w (1 - SSIM)
    render_scale: float = 1.0  # render the training views at this fraction of their size
    checkpoint_every: int = 500  # steps between checkpoints (SCENE/fields/m3/checkpoint.pt)
    seed: int = 0  # queries, projections, view order and sample points
    max_block_mb: int = 256  # memory budget of one similarity / attention block (MiB)
    torch_threads: int = 0  # torch intra-op threads while fitting (0: unchanged). Unlike distill, M3's steps are
    #                         dominated by the attention matmuls: on the 2-core machine the tiny-preset test fit
    #                         took 43-48 s with torch's 2 threads and 63-80 s with 1 (fields.base.torch_threads)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise FieldError(f"m3: steps must be >= 0, got {self.steps}")
        if self.bank_method not in ("algorithm1", "fast"):
            raise FieldError(f"m3: bank_method must be 'algorithm1' or 'fast', got {self.bank_method!r}")
        if not self.temperature > 0:
            raise FieldError(f"m3: temperature must be positive, got {self.temperature}")
        if self.n_points < 1 or self.checkpoint_every < 1 or self.query_dim < 1 or self.default_slice < 1:
            raise FieldError("m3: n_points, checkpoint_every, query_dim and default_slice must be >= 1")
        if not 0 < self.render_scale <= 4:
            raise FieldError(f"m3: render_scale must be in (0, 4], got {self.render_scale}")
        _table(self.slice_dims, int, "slice_dims")
        _table(self.taus, float, "taus")


def _table(text: str, kind, name: str) -> dict:
    out = {}
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = kind(value)
        except ValueError:
            raise FieldError(f"m3: {name} entry '{item}' is not MODEL={kind.__name__}") from None
    return out


def _lookup(table: dict, spec: SpaceSpec, default):
    """A model's entry by alias, then by family (the name before ':')."""
    for key in (spec.alias, spec.name.split(":", 1)[0]):
        if key in table:
            return table[key]
    return default


def slice_layout(config: Config, spaces: list[SpaceSpec]) -> dict[str, slice]:
    """alias -> slice of the principal-query vector, in space order."""
    dims = _table(config.slice_dims, int, "slice_dims")
    out, start = {}, 0
    for spec in spaces:
        c = int(_lookup(dims, spec, config.default_slice))
        if c < 1:
            raise FieldError(f"m3: query slice of '{spec.alias}' must be >= 1, got {c}")
        out[spec.alias] = slice(start, start + c)
        start += c
    if start > config.query_dim:
        raise FieldError(f"m3: the query slices {({a: s.stop - s.start for a, s in out.items()})} need {start} dims, "
                         f"more than query_dim={config.query_dim}; raise query_dim or lower slice_dims")
    return out


def tau_of(config: Config, spec: SpaceSpec) -> float:
    return float(_lookup(_table(config.taus, float, "taus"), spec, config.default_tau))


# ------------------------------------------------------------------------------------------ field
class M3Field(FeatureField):
    method = "m3"
    config_class = Config

    def __init__(self, gaussians: GaussianModel, spaces: list[SpaceSpec], config: Config,
                 banks: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(gaussians, spaces, config)
        self.slices = slice_layout(config, spaces)
        width = max(s.stop for s in self.slices.values())
        self.queries = torch.nn.Parameter(torch.randn(len(gaussians), width))
        for i, (alias, spec) in enumerate(self.spaces.items()):
            c = self.slices[alias].stop - self.slices[alias].start
            self.register_parameter(f"proj{i}", torch.nn.Parameter(torch.randn(c, spec.dim),
                                                                   requires_grad=bool(config.learn_projection)))
            bank = banks[alias] if banks is not None else torch.zeros(0, spec.dim)
            if bank.ndim != 2 or bank.shape[1] != spec.dim:
                raise FieldError(f"m3: bank of '{alias}' has shape {tuple(bank.shape)}, expected (K, {spec.dim})")
            self.register_buffer(f"bank{i}", bank.detach().float().contiguous())

    # -- parts
    def _index(self, alias: str) -> int:
        self.space(alias)
        return list(self.spaces).index(alias)

    def bank(self, alias: str) -> torch.Tensor:
        return getattr(self, f"bank{self._index(alias)}")

    def projection(self, alias: str) -> torch.Tensor:
        return getattr(self, f"proj{self._index(alias)}")

    def attend(self, alias: str, q: torch.Tensor) -> torch.Tensor:
        """(P, c_m) principal queries of model `alias` -> (P, D_m) features in its space."""
        bank = self.bank(alias)
        if bank.shape[0] == 0:
            raise FieldError(f"m3: the memory bank of '{alias}' is empty (field not fitted)")
        return memory_attention(q, self.projection(alias), bank, self.config.temperature,
                                max_block_bytes=self.config.max_block_mb << 20)

    def decode_map(self, alias: str, qmap: torch.Tensor) -> torch.Tensor:
        """(c_m, h, w) rendered query slice -> (D_m, h, w)."""
        c, h, w = qmap.shape
        return self.attend(alias, qmap.reshape(c, -1).T).T.reshape(-1, h, w)

    # -- interface
    def render(self, camera, spaces=None, size=None) -> FieldRender:
        spaces = list(self.spaces) if spaces is None else list(spaces)
        for a in spaces:
            self.space(a)
        cam = camera_at(camera, size)
        with torch.no_grad():
            res = splat(self.gaussians, self.queries, cam)
            feats = {a: self.decode_map(a, res.image[self.slices[a]]) for a in spaces}
        return FieldRender(features=feats, alpha=res.alpha, depth=res.expected_depth(), camera=cam)

    def gaussian_features(self, space: str) -> torch.Tensor:
        """(N, D) attention output of every Gaussian's own query (chunked by the attention)."""
        self.space(space)
        with torch.no_grad():
            return self.attend(space, self.queries[:, self.slices[space]])

    @classmethod
    def from_saved(cls, gaussians, spaces, config: dict, tensors: dict, meta: dict) -> "M3Field":
        cfg = cls.config_class(**config)
        banks = {}
        for i, spec in enumerate(spaces):
            key = f"bank{i}"
            if key not in tensors:
                raise FieldError(f"m3 field: saved tensors lack '{key}' (the memory bank of '{spec.alias}')")
            banks[spec.alias] = tensors[key]
        field_ = cls(gaussians, spaces, cfg, banks)
        field_.load_state_tensors(tensors)
        field_.summary = meta.get("summary", {})
        return field_

    def footprint(self) -> dict:
        """Bytes held by the field (float32), besides the Gaussians' geometry."""
        banks = {a: int(self.bank(a).numel() * 4) for a in self.spaces}
        proj = sum(int(self.projection(a).numel() * 4) for a in self.spaces)
        q = int(self.queries.numel() * 4)
        return {"queries_bytes": q, "bytes_per_gaussian": int(self.queries.shape[1] * 4), "banks_bytes": banks,
                "projections_bytes": proj, "total_bytes": q + proj + sum(banks.values())}


FIELD = M3Field


# ------------------------------------------------------------------------------------------ banks
def _bank_path(root: Path, spec: SpaceSpec) -> Path:
    return root / MEMORY_DIR / f"{spec.key}.safetensors"


def _read_bank(path: Path) -> tuple[MemoryBank, dict] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        info = json.loads(meta["info"])
        bank = MemoryBank.from_tensors(tensors["bank"], info["tau"], tensors["counts"], info["rows_seen"])
    except Exception as err:  # damaged file: say so, rebuild it
        tqdm.write(f"{path}: unreadable memory bank ({err}); rebuilding it")
        return None
    return bank, info


def _write_bank(path: Path, bank: MemoryBank, info: dict) -> None:
    from safetensors.torch import save_file

    tensors = {"bank": bank.raw.clone(), "counts": bank.counts.clone()}
    atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata={"info": json.dumps(info)}))


def build_bank(bundle: SceneBundle, spec: SpaceSpec, maps: dict[str, torch.Tensor], config: Config,
               progress: bool = True) -> tuple[MemoryBank, dict]:
    """The memory bank of `spec` over the training views (`maps`: view name -> (D, h, w), in view order).

    Cached in SCENE/memory/<key>.safetensors with its tau, method and views: reused when they match;
    a 'fast' bank built on some of the views grows by the missing ones (streaming) instead of being
    rebuilt. Zero feature rows (no target) are left out."""
    tau = tau_of(config, spec)
    method = config.bank_method
    names = list(maps)
    path = _bank_path(bundle.root, spec)
    cached = _read_bank(path)
    t0 = time.perf_counter()
    block = config.max_block_mb << 20
    reused = "built"
    bank = None
    if cached is not None:
        old, info = cached
        same = info.get("tau") == tau and info.get("method") == method and info.get("key") == spec.key
        if same and info.get("views") == names:
            bank, reused = old, "cached"
        elif same and method == "fast" and set(info.get("views", [])) <= set(names):
            bank, reused = old, "extended"
            bank.max_block_bytes = block
            todo = [n for n in names if n not in set(info["views"])]
            x = flatten_views([maps[n] for n in todo])
            bank.add(x[nonzero_rows(x)], progress=progress)
    if bank is None:
        x = flatten_views([maps[n] for n in names])
        x = x[nonzero_rows(x)]
        if x.shape[0] == 0:
            raise FieldError(f"m3: every feature of '{spec.alias}' on the training views is zero; nothing to remember")
        bank = MemoryBank.from_rows(x, tau, method=method, progress=progress, max_block_bytes=block)
    seconds = time.perf_counter() - t0
    info = {"key": spec.key, "alias": spec.alias, "tau": tau, "method": method, "views": names,
            "rows_seen": int(bank.rows_seen)}
    if reused != "cached":
        _write_bank(path, bank, info)
    rows = flatten_views([maps[n] for n in names])
    stats = {"entries": len(bank), "rows": int(nonzero_rows(rows).sum()), "tau": tau, "method": method,
             "source": reused, "seconds": round(seconds, 3), "bytes": bank.nbytes, **bank.coverage(rows)}
    return bank, stats


# ------------------------------------------------------------------------------------------ training
def sample_points(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) uniform random points as grid_sample coordinates in [-1, 1] (x, y)."""
    return torch.rand(n, 2, generator=generator) * 2.0 - 1.0


def point_sample(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a (C, H, W) map at (n, 2) grid points (align_corners=False, border) -> (n, C)."""
    out = F.grid_sample(image[None], points[None, None].to(image.dtype), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, 0].T


def feature_loss(pred: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """weight · ((1 - cos) + MSE) over the rows of (n, D) whose target is non-zero."""
    valid = nonzero_rows(target)
    if not valid.any():
        return pred.sum() * 0.0
    p, t = pred[valid], target[valid]
    cos = F.cosine_similarity(p, t, dim=-1, eps=1e-6).mean()
    return weight * ((1.0 - cos) + F.mse_loss(p, t))


def _resolve_config(config: Config | None, overrides: dict) -> Config:
    return resolve_config(Config, "m3", config, overrides)


# fields that may change between a run and its resumption
_RESUME_FREE = ("steps", "checkpoint_every", "max_block_mb", "torch_threads")


def _resume_identity(cfg: Config) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in _RESUME_FREE}


def _geometry_params(g: GaussianModel) -> dict[str, torch.nn.Parameter]:
    return {"means": g.means, "quats": g.quats, "scales": g.scales, "opacities": g.opacities,
            "sh0": g.sh[:, :1], "shN": g.sh[:, 1:]}


def _as_model(p: dict, sh_degree: int) -> GaussianModel:
    return GaussianModel(means=p["means"], quats=p["quats"], scales=p["scales"], opacities=p["opacities"],
                         sh=torch.cat([p["sh0"], p["shN"]], 1), sh_degree=sh_degree)


def _load_targets(bundle: SceneBundle, spaces: list[SpaceSpec], progress: bool) -> dict[str, list[torch.Tensor]]:
    targets = {}
    for spec in spaces:
        cache = bundle.feature_cache(spec, progress=progress)
        targets[spec.alias] = [cache.get(bundle.view_name(i)) for i in range(len(bundle.dataset))]
    return targets


def fit(scene_dir, models=None, config: Config | None = None, resume: bool = False, progress: bool = True,
        bundle: SceneBundle | None = None, **overrides) -> M3Field:
    """Fit M3 on the trained scene `scene_dir` and save SCENE/fields/m3/ (see the module docstring).

    models: extractor names (default effnet, effnet-mid, effnet-labels); config / overrides: Config fields. While it
    runs, SCENE/fields/m3/checkpoint.pt is rewritten atomically every `checkpoint_every` steps;
    `resume=True` continues from it (same settings; `steps` may grow)."""
    cfg = _resolve_config(config, overrides)
    with torch_threads(cfg.torch_threads):
        return _fit(scene_dir, models, cfg, resume, progress, bundle)


def _fit(scene_dir, models, cfg: Config, resume: bool, progress: bool, bundle: SceneBundle | None) -> M3Field:
    from fmsplat.reconstruct.train import TrainConfig

    bundle = bundle or open_scene(scene_dir)
    scene_dir = Path(scene_dir)
    spaces = [parse_space(m) if isinstance(m, str) else m for m in (models or DEFAULT_MODELS)]
    if len({s.alias for s in spaces}) != len(spaces):
        raise FieldError(f"m3: two models share an alias in {[s.alias for s in spaces]}; give them distinct names")
    data = bundle.dataset
    if not data.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    slice_layout(cfg, spaces)  # fail on a bad layout before any extraction
    targets = _load_targets(bundle, spaces, progress)

    t_bank = time.perf_counter()
    banks, bank_stats = {}, {}
    for spec in spaces:
        maps = {bundle.view_name(i): targets[spec.alias][i] for i in data.train_indices}
        bank, bank_stats[spec.alias] = build_bank(bundle, spec, maps, cfg, progress)
        banks[spec.alias] = bank.raw.clone()
    bank_seconds = time.perf_counter() - t_bank

    torch.manual_seed(cfg.seed)
    field_ = M3Field(bundle.gaussians, spaces, cfg, banks)
    groups = [{"params": [field_.queries], "lr": cfg.lr_queries, "name": "queries"}]
    if cfg.learn_projection:
        groups.append({"params": [field_.projection(a) for a in field_.spaces], "lr": cfg.lr_projection,
                       "name": "projections"})
    geometry: dict[str, torch.nn.Parameter] = {}
    sh_degree = bundle.gaussians.sh_degree
    background = torch.zeros(3)
    if cfg.joint:
        tc = TrainConfig()
        extent = float(bundle.meta.get("scene_extent") or data.extent or 1.0)
        geometry = {k: torch.nn.Parameter(v.detach().float().clone().contiguous())
                    for k, v in _geometry_params(bundle.gaussians).items()}
        # fine-tuning a converged 3DGS: positions at the 3DGS schedule's final rate, the rest at theirs
        lrs = {"means": tc.lr_means_final * extent, "quats": tc.lr_quats, "scales": tc.lr_scales,
               "opacities": tc.lr_opacities, "sh0": tc.lr_sh0, "shN": tc.lr_shN}
        groups += [{"params": [geometry[k]], "lr": lr, "name": k} for k, lr in lrs.items()]
        background = torch.as_tensor((bundle.meta.get("train_config") or {}).get("background", (0.0, 0.0, 0.0)),
                                     dtype=torch.float32)
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    generator = torch.Generator().manual_seed(cfg.seed)

    ckpt = scene_dir / "fields" / M3Field.method / CHECKPOINT
    start, elapsed, loss_ema = 0, 0.0, None
    if resume and ckpt.is_file():
        try:
            state = torch.load(ckpt, weights_only=True)
        except Exception as err:
            raise FieldError(f"{ckpt}: cannot read the checkpoint ({err}); delete it to start afresh") from err
        saved = json.loads(state["config"])
        now = _resume_identity(cfg)
        diffs = [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in now if saved.get(k) != now[k]]
        if state["num_gaussians"] != len(bundle.gaussians) or state["aliases"] != list(field_.spaces):
            diffs.append("written for another scene or other models")
        shapes = {k: tuple(v.shape) for k, v in state["field"].items()}
        mine = {k: tuple(v.shape) for k, v in field_.state_dict().items()}
        if not diffs and shapes != mine:
            diffs.append(f"memory banks differ ({ {k: s for k, s in shapes.items() if mine.get(k) != s} })")
        if diffs:
            raise FieldError(f"{ckpt}: cannot resume, the run was started with different settings "
                             f"({'; '.join(diffs)}); resume with the original settings or delete it")
        field_.load_state_dict(state["field"])
        for k, v in state.get("geometry", {}).items():
            geometry[k].data.copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, elapsed, loss_ema = int(state["step"]), float(state["seconds"]), state["loss_ema"]
        if progress:
            tqdm.write(f"{ckpt}: resuming at step {start} of {cfg.steps}")
    elif ckpt.is_file():
        warnings.warn(f"{ckpt}: an earlier run's checkpoint exists; starting afresh will replace it "
                      "(pass resume=True / --resume to continue it)", stacklevel=2)
    elif resume:
        warnings.warn(f"{ckpt}: resume asked but there is no checkpoint; starting afresh", stacklevel=2)

    train = torch.tensor(data.train_indices)
    aliases = list(field_.spaces)
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="m3", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        i = int(train[torch.randint(len(train), (1,), generator=generator)])
        cam = data.cameras[i]
        size = (max(1, round(cam.width * cfg.render_scale)), max(1, round(cam.height * cfg.render_scale)))
        cam_s = camera_at(cam, size)
        loss = torch.zeros(())
        if cfg.joint:
            model = _as_model(geometry, sh_degree)
            means, quats, scales, opac = model.activated()
            rgb = model.colors(cam_s.center)
            res = rasterize(means, quats, scales, opac, torch.cat([rgb, field_.queries], 1),
                            cam_s.viewmat_tensor(), cam_s.K_tensor(), cam_s.width, cam_s.height,
                            background=torch.cat([background, torch.zeros(field_.queries.shape[1])]))
            image = res.image.permute(2, 0, 1)
            gt = torch.tensor(data.image(i), dtype=torch.float32).permute(2, 0, 1)[None]
            if tuple(gt.shape[-2:]) != tuple(image.shape[-2:]):
                gt = F.interpolate(gt, size=image.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            loss = loss + rgb_loss(image[:3].permute(1, 2, 0), gt[0].permute(1, 2, 0), cfg.ssim_weight)
            qimage = image[3:]
        else:
            qimage = splat(bundle.gaussians, field_.queries, cam_s).image
        for alias in aliases:
            pts = sample_points(cfg.n_points, generator)
            q = point_sample(qimage[field_.slices[alias]], pts)
            target = point_sample(targets[alias][i], pts)
            loss = loss + feature_loss(field_.attend(alias, q), target, cfg.feature_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_ema:.4f}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            state = {"step": done, "seconds": elapsed + time.perf_counter() - t0, "field": field_.state_dict(),
                     "geometry": {k: v.detach() for k, v in geometry.items()},
                     "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                     "num_gaussians": len(bundle.gaussians), "aliases": aliases, "loss_ema": loss_ema,
                     "config": json.dumps(_resume_identity(cfg))}
            atomic.write_with(ckpt, lambda tmp: torch.save(state, tmp))
    bar.close()
    if cfg.joint:
        field_.gaussians = _as_model({k: v.detach() for k, v in geometry.items()}, sh_degree)
        field_.owns_geometry = True
    field_.summary = {
        "steps": cfg.steps, "fit_seconds": round(elapsed + time.perf_counter() - t0, 2),
        "bank_seconds": round(bank_seconds, 2), "resumed_from_step": start or None,
        "final_loss_ema": loss_ema, "joint": cfg.joint,
        "query_dims": {a: s.stop - s.start for a, s in field_.slices.items()},
        "banks": bank_stats, "memory": field_.footprint(),
    }
    field_.eval()
    field_.save(scene_dir)
    if ckpt.exists():
        ckpt.unlink()
    return field_


__all__ = ["Config", "FIELD", "M3Field", "build_bank", "feature_loss", "fit", "point_sample", "sample_points",
           "slice_layout", "tau_of"]
