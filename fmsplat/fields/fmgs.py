"""FMGS (Zuo et al. 2024, arXiv 2401.01970): a hash-grid feature field read at the Gaussians' centres.

The field: FMGS's two multi-resolution hash grids (12 levels each, 16→128 and 128→512, 2^19-row
tables, 8 features per level: 192 features, `fields/hashgrid.py`) are read at the Mip-NeRF-360-
contracted centre of every Gaussian whose opacity exceeds 0.25 (the others carry no features and
are left out of feature renders). Two MLP heads decode the 192 features: the language head (4
hidden layers of 256, ReLU → D, L2-normalised) into the language model's joint space, the alignment
head (1 × 256 → D_align) into the alignment model's space (the paper's CLIP and DINO). The geometry
is the trained 3DGS scene's, frozen.

Render, then decode (the order of the paper's pipeline): the rasterizer splats the 192 hash features (alpha-blended like
colours) and the heads decode every pixel of that feature image. The alternative — decode all
Gaussians, splat D = 1280 channels — costs about the same in the numba rasterizer (its time barely
depends on the channel count), but runs the 4-layer head on every Gaussian (10⁴–10⁶) instead of
every rendered pixel (a few thousand at training resolution) and carries D-wide gradients through
the rasterizer. `gaussian_features` decodes per Gaussian (a Gaussian's own feature, not a blend), so
it matches rendered pixels only where one Gaussian dominates.

Supervision and resolution. Language: the FMGS hybrid multi-scale pyramid of the language model
(`pyramid=True`, default; `False` uses the model's plain dense map, an ablation). Alignment: the
alignment model's dense map (default `effnet-mid@stride=8`, the DINO ViT-S/8 role: stride 8 gives a
12×16 grid on a 128×96 view, where stride 16 would leave 6×8, too coarse for 3×3 neighbourhoods).
Features are rendered at `render_scale` (paper: half) of the image size, decoded, then area-pooled
to the loss grid: the alignment map's grid (paper: "at DINO-map resolution"), with the language
target resampled onto it; `loss_grid="own"` instead compares each space at its own teacher grid
(the pyramid's grid is finer: a 2-px spacing on 96-px views). A teacher cell sees its whole
receptive field, so the average of the rendered pixels over the cell is what it should match.
On the CPU every teacher runs once per view, cached (`<scene>/features/`): the stride-32 effnet map
is only 3×4 on a 128×96 view — use `effnet@input_scale=4` (12×16) or the pyramid.

Loss: (1 - λ)·MSE(alignment) + λ·Huber_δ=1.25(language), λ = 0.2, each summed over channels and
averaged over pixels (LERF's reduction); after the first 2,500 of 4,200 steps (the fraction scales
with `steps`) plus 0.01 × the pixel-alignment loss: at every pixel of the rendered maps, the cosine
to its 8 neighbours (3×3, reflect padding) on the language map and on the alignment map, L1 between
the two with the alignment side detached — the language map learns the alignment map's sharper
boundaries. RAdam, lr 5e-3 decaying exponentially to 2e-3.

Our choices where the paper is silent or the CPU budget differs (all Config fields): optimiser
ε = 1e-15 (Instant-NGP's; hash-table gradients are tiny), the heads' last biases start at the mean
training target, `optimizer="adam"` for runs of a few hundred steps (RAdam's rectification keeps
its effective step small for the first ~1,000), the scene box from quantiles of the centres.
On 2 idle cores a step costs ~0.05 s at `render_scale=0.25` on the 12k-Gaussian tiny scene
(~0.09 s with the pixel-alignment loss); 600 Adam steps localise its labelled objects.

CPU training path: the Gaussians do not move, so their hash-grid corners are resolved once
(`HashGrid.freeze`) and the optimiser sees a compact table of just the rows they touch (identical
to training the full tables: untouched rows get no gradient); the full tables receive the trained
rows at the end and are saved sparsely (they start at zero, so only touched rows are stored).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
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
)
from fmsplat.fields.hashgrid import HashGrid, geometric_resolutions, scene_box, to_unit_cube
from fmsplat.render import rasterize

DEFAULT_MODELS = ("effnet", "effnet-mid@stride=8")  # (language model, alignment model)
CHECKPOINT = "checkpoint.pt"
PAPER_STEPS = 4200
PAPER_WARMUP = 2500
DECODE_CHUNK = 16384  # pixels or Gaussians per head call


@dataclass
class Config:
    """FMGS settings; defaults are the paper's (official code) unless said otherwise."""

    steps: int = 4200  # feature-field optimisation steps, one training view each (paper: 4,200 after 30k 3DGS steps)
    pyramid: bool = True  # language targets from the FMGS hybrid multi-scale pyramid (False: plain dense map; ablation)
    pyramid_tile_input: int = 0  # pixels each pyramid tile is resized to before encoding (0: the model's input size,
    #   224, as the paper). The pyramid costs ~900 tile encodings per 320x240 view: at 224 that is about a minute
    #   per view on 2 CPU cores, so CPU runs on many views want a smaller size (bench/README.md, "Feature fields")
    pixel_align: bool = True  # add the pixel-alignment loss after the warm-up (False: ablation)
    grids: tuple = ((12, 16, 128), (12, 128, 512))  # hash grids as (levels, min resolution, max resolution)
    log2_table: int = 19  # hash table size 2^19 rows per level
    grid_features: int = 8  # features per level (2 grids x 12 levels x 8 = 192)
    contraction: str = "inf"  # Mip-NeRF 360 contraction norm: "inf" (the scene box stays uncontracted) or "l2"
    bounds_quantile: float = 0.01  # scene box = per-axis [q, 1-q] quantiles of the feature Gaussians' centres
    bounds_margin: float = 0.1  # ... widened by this fraction of its size on each side (ours; paper: scene bounds)
    min_opacity: float = 0.25  # only Gaussians with opacity above this carry features
    hidden: int = 256  # width of both heads
    language_layers: int = 4  # hidden layers of the language head (paper: 4 x 256, ReLU)
    align_layers: int = 1  # hidden layers of the alignment head (paper: 1 x 256)
    lam: float = 0.2  # λ: loss = (1 - λ)·MSE(alignment) + λ·Huber(language)
    huber_delta: float = 1.25  # Huber δ of the language loss
    pixel_align_weight: float = 0.01  # weight of the pixel-alignment loss
    pixel_align_start: float = PAPER_WARMUP / PAPER_STEPS  # fraction of steps before it switches on (2,500 of 4,200)
    optimizer: str = "radam"  # "radam" (paper) or "adam": RAdam's variance rectification damps its first ~1,000 steps
    #   (effective lr ~0.2x at step 100, ~0.65x at 1,000): right for 4,200 steps, slow for a few hundred on a CPU
    eps: float = 1e-15  # optimiser ε (Instant-NGP's; the paper gives none): the per-row gradients of hash tables
    #   under a mean-reduced loss on unit vectors are ~1e-9 or less, which torch's default 1e-8 would stall
    lr: float = 5e-3  # learning rate at the first step (hash tables and heads)
    lr_final: float = 2e-3  # ... decayed exponentially to this at the last step
    render_scale: float = 0.5  # features are rendered at this fraction of the image size (paper: half)
    loss_grid: str = "alignment"  # "alignment": both losses on the alignment map's grid (paper); "own": each on its teacher's grid
    checkpoint_every: int = 500  # steps between checkpoints (SCENE/fields/fmgs/checkpoint.pt)
    seed: int = 0  # head initialisation and view order

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", float) and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, f.name, float(v))
            if f.type in ("bool", bool) and not isinstance(v, bool):
                raise FieldError(f"fmgs config: {f.name} must be true or false, got {v!r}")
        try:
            self.grids = tuple((int(a), int(b), int(c)) for a, b, c in self.grids)
        except (TypeError, ValueError) as err:
            raise FieldError(f"fmgs config: grids must be (levels, min_res, max_res) triples, got {self.grids!r}") from err
        problems = []
        if self.steps < 0:
            problems.append(f"steps must be >= 0, got {self.steps}")
        if self.pyramid_tile_input != 0 and self.pyramid_tile_input < 8:
            problems.append(f"pyramid_tile_input must be 0 (the model's input size) or >= 8, got {self.pyramid_tile_input}")
        if not self.grids:
            problems.append("grids: at least one grid")
        for levels, lo, hi in self.grids:
            if levels < 1 or lo < 1 or hi < lo:
                problems.append(f"grid ({levels}, {lo}, {hi}): need levels >= 1 and 1 <= min_res <= max_res")
        if self.contraction not in ("inf", "l2"):
            problems.append(f"contraction must be 'inf' or 'l2', got {self.contraction!r}")
        if self.optimizer not in ("radam", "adam"):
            problems.append(f"optimizer must be 'radam' or 'adam', got {self.optimizer!r}")
        if self.loss_grid not in ("alignment", "own"):
            problems.append(f"loss_grid must be 'alignment' or 'own', got {self.loss_grid!r}")
        if not 0.0 <= self.lam <= 1.0:
            problems.append(f"lam must lie in [0, 1], got {self.lam}")
        if not 0.0 < self.render_scale <= 4.0:
            problems.append(f"render_scale must lie in (0, 4], got {self.render_scale}")
        if not 0.0 <= self.pixel_align_start <= 1.0:
            problems.append(f"pixel_align_start is a fraction of the steps in [0, 1], got {self.pixel_align_start}")
        if not self.eps > 0:
            problems.append(f"eps must be positive, got {self.eps}")
        if self.lr <= 0 or self.lr_final <= 0:
            problems.append(f"lr and lr_final must be positive, got {self.lr}, {self.lr_final}")
        if self.hidden < 1 or self.language_layers < 1 or self.align_layers < 1 or self.grid_features < 1:
            problems.append("hidden, language_layers, align_layers and grid_features must be >= 1")
        if self.checkpoint_every < 1:
            problems.append(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if problems:
            raise FieldError("fmgs config: " + "; ".join(problems))

    @property
    def resolutions(self) -> list[int]:
        return [r for levels, lo, hi in self.grids for r in geometric_resolutions(levels, lo, hi)]


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> torch.nn.Sequential:
    """`layers` hidden Linear+ReLU layers of width `hidden`, then a Linear to `outputs`."""
    mods, width = [], inputs
    for _ in range(layers):
        mods += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    mods.append(torch.nn.Linear(width, outputs))
    return torch.nn.Sequential(*mods)


class FMGSField(FeatureField):
    """Hash grid at the Gaussian centres + language and alignment heads (see the module docstring).

    spaces: [language space, alignment space] (the first must be language-aligned)."""

    method = "fmgs"
    config_class = Config

    def __init__(self, gaussians, spaces: list[SpaceSpec], config: Config) -> None:
        super().__init__(gaussians, spaces, config)
        if len(spaces) != 2:
            raise FieldError(f"fmgs: needs two models, a language model and an alignment model; got "
                             f"{[s.alias for s in spaces]}")
        if not spaces[0].language_aligned:
            raise FieldError(f"fmgs: the first model ({spaces[0].name}) must be language-aligned (the CLIP role)")
        if spaces[0].alias == spaces[1].alias:
            raise FieldError(f"fmgs: the two models share the alias '{spaces[0].alias}'")
        self.language_alias, self.align_alias = spaces[0].alias, spaces[1].alias
        self.grid = HashGrid(config.resolutions, log2_table=config.log2_table, features=config.grid_features)
        width = self.grid.out_dim
        self.heads = torch.nn.ModuleDict({
            _p(self.language_alias): mlp(width, config.hidden, config.language_layers, spaces[0].dim),
            _p(self.align_alias): mlp(width, config.hidden, config.align_layers, spaces[1].dim),
        })
        self.register_buffer("box_centre", torch.zeros(3))
        self.register_buffer("box_half", torch.ones(3))
        self._carriers: tuple | None = None

    # -- geometry (frozen)
    def carriers(self):
        """(mask (N,), means, quats, scales, opacities) of the Gaussians that carry features (cached)."""
        if self._carriers is None:
            with torch.no_grad():
                means, quats, scales, opac = (t.detach() for t in self.gaussians.activated())
                mask = opac > self.config.min_opacity
                if not bool(mask.any()):
                    raise FieldError(f"fmgs: no Gaussian has opacity > {self.config.min_opacity}; nothing can carry features")
                self._carriers = (mask, means[mask].contiguous(), quats[mask].contiguous(), scales[mask].contiguous(),
                                  opac[mask].contiguous())
        return self._carriers

    def fit_box(self) -> None:
        """Scene box from the feature-carrying centres (before training)."""
        _, means, *_ = self.carriers()
        centre, half = scene_box(means, self.config.bounds_quantile, self.config.bounds_margin)
        self.box_centre.copy_(centre)
        self.box_half.copy_(half)

    def unit_positions(self, points: torch.Tensor) -> torch.Tensor:
        """World points -> the grid's unit cube (scene box, contraction)."""
        return to_unit_cube(points.detach().float(), self.box_centre, self.box_half, self.config.contraction)

    # -- decoding
    def decode(self, alias: str, feats: torch.Tensor) -> torch.Tensor:
        """(P, 192) hash features (rendered pixels or Gaussians) -> (P, D) in the space `alias`."""
        out = self.heads[_p(alias)](feats)
        return F.normalize(out, dim=-1) if alias == self.language_alias else out

    def init_output_biases(self, language_mean: torch.Tensor, align_mean: torch.Tensor) -> None:
        """Start both heads at the mean training target (their last bias; ours, not the paper's):
        raw alignment features can lie far from zero (effnet-mid: |mean| up to ~10), which a bias
        moving ~lr per step would take thousands of steps to reach; the objective is unchanged."""
        with torch.no_grad():
            self.heads[_p(self.language_alias)][-1].bias.copy_(language_mean)
            self.heads[_p(self.align_alias)][-1].bias.copy_(align_mean)

    def language_with_basis(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 192) -> (unit language features (P, D), a (P, K) basis with the same pairwise dot
        products as the head's unnormalised outputs).

        The head ends in o = W·h + b, so o_p·o_q = h̃_pᵀ(W̃ᵀW̃)h̃_q with h̃ = [h, 1], W̃ = [W | b];
        with W̃ᵀW̃ = L·Lᵀ (Cholesky), the rows h̃·L have exactly those dot products in K = width + 1
        dimensions instead of D. Cosines between pixels (the pixel-alignment loss) then cost K/D as
        much. When D <= K the outputs themselves are the basis."""
        head = self.heads[_p(self.language_alias)]
        hidden = head[:-1](feats)
        last = head[-1]
        out = last(hidden)
        if out.shape[1] <= hidden.shape[1] + 1:
            return F.normalize(out, dim=-1), out
        w_aug = torch.cat([last.weight, last.bias[:, None]], dim=1).double()  # (D, K)
        chol, info = torch.linalg.cholesky_ex(w_aug.T @ w_aug)
        if int(info) != 0:  # W̃ numerically rank-deficient: the outputs themselves are an exact (slower) basis
            return F.normalize(out, dim=-1), out
        basis = torch.cat([hidden, hidden.new_ones(len(hidden), 1)], dim=1) @ chol.float()
        return F.normalize(out, dim=-1), basis

    def _decode_chunked(self, alias: str, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.decode(alias, feats[i:i + DECODE_CHUNK]) for i in range(0, len(feats), DECODE_CHUNK)]) \
            if len(feats) else feats.new_zeros(0, self.space(alias).dim)

    def splat_features(self, feats: torch.Tensor, camera):
        """Rasterize per-carrier hash features (M, C) into the camera -> RenderResult, image (C, h, w)."""
        _, means, quats, scales, opac = self.carriers()
        res = rasterize(means, quats, scales, opac, feats, camera.viewmat_tensor(), camera.K_tensor(),
                        camera.width, camera.height)
        res.image = res.image.permute(2, 0, 1)
        return res

    def carrier_features(self) -> torch.Tensor:
        """(M, 192) hash features at the carriers' centres; cached while the tables stay unchanged
        (a query session renders many views of a fitted field)."""
        version = (self.grid.table._version, self.box_centre._version, self.box_half._version)
        cached = getattr(self, "_carrier_cache", None)
        if cached is None or cached[0] != version:
            with torch.no_grad():
                _, means, *_ = self.carriers()
                cached = (version, self.grid(self.unit_positions(means)))
            self._carrier_cache = cached
        return cached[1]

    def render(self, camera, spaces=None, size=None) -> FieldRender:
        spaces = list(self.spaces) if spaces is None else list(spaces)
        for a in spaces:
            self.space(a)
        cam = camera_at(camera, size)
        with torch.no_grad():
            res = self.splat_features(self.carrier_features(), cam)
            pixels = res.image.flatten(1).T  # (h·w, 192)
            feats = {a: self._decode_chunked(a, pixels).T.reshape(-1, cam.height, cam.width) for a in spaces}
        return FieldRender(features=feats, alpha=res.alpha, depth=res.expected_depth(), camera=cam)

    def render_text_dots(self, camera, space, texts, size=None):
        """Language space without decoding to D: the head ends in o = W·h + b and its output is o/|o|,
        so texts·feature = (h̃·W̃ᵀt)/|o| with h̃ = [h, 1], W̃ = [W | b], and |o|² = h̃ᵀ(W̃ᵀW̃)h̃. Per pixel
        that is T + 257 products of 257 values instead of D = 1280 (the head's last layer was over
        half the cost of a relevancy map)."""
        if space != self.language_alias:
            return super().render_text_dots(camera, space, texts, size)
        cam = camera_at(camera, size)
        head = self.heads[_p(self.language_alias)]
        last = head[-1]
        with torch.no_grad():
            res = self.splat_features(self.carrier_features(), cam)
            pixels = res.image.flatten(1).T
            w_aug = torch.cat([last.weight, last.bias[:, None]], dim=1)  # (D, K)
            proj = texts.float() @ w_aug  # (T, K)
            gram = (w_aug.T.double() @ w_aug.double()).float()  # (K, K)
            dots, sq = [], []
            for i in range(0, len(pixels), DECODE_CHUNK):
                hidden = head[:-1](pixels[i:i + DECODE_CHUNK])
                h_aug = torch.cat([hidden, hidden.new_ones(len(hidden), 1)], dim=1)
                dots.append(h_aug @ proj.T)
                sq.append(((h_aug @ gram) * h_aug).sum(1))
            hw = (cam.height, cam.width)
            dots = torch.cat(dots).T.reshape(-1, *hw)
            sq = torch.cat(sq).reshape(hw)
        return dots, sq, FieldRender({}, res.alpha, res.expected_depth(), cam)

    def gaussian_features(self, space: str) -> torch.Tensor:
        """(N, D) features decoded at every Gaussian's own centre; zero rows for Gaussians at or below
        `min_opacity` (they carry no features)."""
        self.space(space)
        with torch.no_grad():
            mask, means, *_ = self.carriers()
            out = torch.zeros(len(mask), self.space(space).dim)
            out[mask] = self._decode_chunked(space, self.grid(self.unit_positions(means)))
        return out

    # -- persistence: the tables sparsely (only rows that are not zero), the rest as is
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().contiguous() for k, v in self.state_dict().items() if k != "grid.table"}
        sparse = self.grid.sparse_state()
        out["grid.rows"], out["grid.values"] = sparse["rows"], sparse["values"].contiguous()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        missing = [k for k in ("grid.rows", "grid.values") if k not in tensors]
        if missing:
            raise FieldError(f"fmgs field tensors lack {missing} (not an FMGS field, or written by another version)")
        rows, values = tensors.pop("grid.rows"), tensors.pop("grid.values")
        self.grid.load_sparse_state(rows, values, where="fmgs field tensors")
        tensors["grid.table"] = self.grid.table.detach()
        try:
            self.load_state_dict(tensors)
        except RuntimeError as err:
            raise FieldError(f"fmgs field tensors do not fit the saved config ({err})") from err


FIELD = FMGSField


def _p(alias: str) -> str:
    return alias.replace(".", "_")


# ------------------------------------------------------------------------------------------ losses
def resample(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, h, w): area average when shrinking (a coarse cell is the mean of what it
    covers), bilinear when growing."""
    grid = (int(grid[0]), int(grid[1]))
    if tuple(image.shape[-2:]) == grid:
        return image
    if grid[0] <= image.shape[-2] and grid[1] <= image.shape[-1]:
        return F.adaptive_avg_pool2d(image[None], grid)[0]
    return F.interpolate(image[None], size=grid, mode="bilinear", align_corners=False)[0]


NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_cosines(features: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (8, H, W): cosine of each pixel's feature to each of its 8 neighbours
    (3×3 window, reflect padding at the border)."""
    if features.shape[-2] < 2 or features.shape[-1] < 2:
        raise ValueError(f"pixel alignment needs maps of at least 2x2 pixels, got {tuple(features.shape[-2:])}")
    unit = F.normalize(features, dim=0)
    padded = F.pad(unit[None], (1, 1, 1, 1), mode="reflect")[0]
    h, w = unit.shape[-2:]
    return torch.stack([(unit * padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]).sum(0) for dy, dx in NEIGHBOURS])


def pixel_alignment_loss(language: torch.Tensor, alignment: torch.Tensor) -> torch.Tensor:
    """FMGS pixel alignment: L1 between the neighbour-cosine maps of the rendered language map and
    of the rendered alignment map (detached: the language map is pulled toward its structure)."""
    if language.shape[-2:] != alignment.shape[-2:]:
        raise ValueError(f"pixel alignment: maps differ in size, {tuple(language.shape)} vs {tuple(alignment.shape)}")
    return (neighbour_cosines(language) - neighbour_cosines(alignment.detach())).abs().mean()


def fmgs_loss(lang_pred, lang_target, align_pred, align_target, cfg: Config):
    """(1 - λ)·MSE(alignment) + λ·Huber_δ(language) and its two parts, for (D, h, w) maps.

    Each term is summed over the feature channels and averaged over the pixels, the reduction of
    LERF, on whose code FMGS builds (for unit vectors the Huber term is then about 1 - cos, whatever
    D is); an element-wise mean would shrink the language term by D (1/1280 for effnet) and let the
    0.01-weighted pixel-alignment loss outweigh it."""
    huber = F.huber_loss(lang_pred, lang_target, delta=cfg.huber_delta, reduction="none").sum(0).mean()
    mse = F.mse_loss(align_pred, align_target, reduction="none").sum(0).mean()
    return (1.0 - cfg.lam) * mse + cfg.lam * huber, huber, mse


def lr_at(step: int, cfg: Config) -> float:
    """Exponential decay from cfg.lr at step 0 to cfg.lr_final at the last step."""
    t = step / max(cfg.steps - 1, 1)
    return cfg.lr * (cfg.lr_final / cfg.lr) ** t


def pixel_align_on(step: int, cfg: Config) -> bool:
    return cfg.pixel_align and step >= math.floor(cfg.pixel_align_start * cfg.steps)


# ------------------------------------------------------------------------------------------ training
def _resolve_config(config: Config | None, overrides: dict) -> Config:
    return resolve_config(Config, "fmgs", config, overrides)


def build_spaces(models, cfg: Config) -> list[SpaceSpec]:
    """[language space (through the pyramid when cfg.pyramid), alignment space] from two model names."""
    if isinstance(models, str):
        models = [m for m in models.split(",") if m.strip()]
    models = list(models or DEFAULT_MODELS)
    if len(models) != 2:
        raise FieldError(f"fmgs: give two models, language then alignment (e.g. {','.join(DEFAULT_MODELS)}); got {models}")
    language = models[0]
    if cfg.pyramid and cfg.pyramid_tile_input:
        language += f"@tile_input={int(cfg.pyramid_tile_input)}"
    return [parse_space(language, pyramid=cfg.pyramid), parse_space(models[1])]


def _targets(bundle: SceneBundle, spec: SpaceSpec, indices: list[int], progress: bool) -> dict[int, torch.Tensor]:
    cache = bundle.feature_cache(spec, progress=progress)
    return {i: cache.get(bundle.view_name(i)) for i in indices}


def _config_json(cfg: Config) -> dict:
    d = asdict(cfg)
    d["grids"] = [list(g) for g in cfg.grids]
    return d


def _check_resume(ckpt: Path, state: dict, cfg: Config, field_: FMGSField, rows: torch.Tensor) -> None:
    now = _config_json(cfg)
    diffs = [f"{k}: {state['config'].get(k)!r} -> {now[k]!r}" for k in now
             if k != "checkpoint_every" and state["config"].get(k) != now[k]]
    if state["num_gaussians"] != len(field_.gaussians):
        diffs.append(f"Gaussians: {state['num_gaussians']} -> {len(field_.gaussians)}")
    spaces = [s.to_json() for s in field_.spaces.values()]
    if state["spaces"] != spaces:
        diffs.append(f"models: {[s['key'] for s in state['spaces']]} -> {[s['key'] for s in spaces]}")
    if not diffs and not torch.equal(state["rows"], rows):
        diffs.append("the Gaussians' hash-grid rows differ (the scene changed)")
    if diffs:
        raise FieldError(f"{ckpt}: cannot resume, it was written for other settings ({'; '.join(diffs)}); "
                         "resume with the original settings or delete it to start afresh")


def fit(scene_dir, models=None, config: Config | None = None, resume: bool = False, progress: bool = True,
        bundle: SceneBundle | None = None, **overrides) -> FMGSField:
    """Fit FMGS on the trained scene `scene_dir` (geometry frozen) and save SCENE/fields/fmgs/.

    models: (language model, alignment model), default ("effnet", "effnet-mid@stride=8"); the
    language model is seen through the FMGS pyramid unless `pyramid=False`. While it runs,
    SCENE/fields/fmgs/checkpoint.pt is rewritten atomically every `checkpoint_every` steps;
    `resume=True` continues from it."""
    cfg = _resolve_config(config, overrides)
    scene_dir = Path(scene_dir)
    bundle = bundle or open_scene(scene_dir)
    data = bundle.dataset
    if not data.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    spaces = build_spaces(models, cfg)
    lang_spec, align_spec = spaces
    train = list(data.train_indices)

    torch.manual_seed(cfg.seed)
    field_ = FMGSField(bundle.gaussians, spaces, cfg)
    field_.fit_box()
    _, means, *_ = field_.carriers()
    lookup = field_.grid.freeze(field_.unit_positions(means))
    compact = torch.nn.Parameter(field_.grid.table.detach()[lookup.rows].clone())
    heads = list(field_.heads.parameters())
    groups = [{"params": [compact]}, {"params": heads}]
    if cfg.optimizer == "radam":
        optimizer = torch.optim.RAdam(groups, lr=cfg.lr, eps=cfg.eps)
    else:  # the fused CPU kernel: one pass over the parameters instead of a dozen (~7x faster here)
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps, fused=True)

    # teachers (cached on disk per view) resampled once onto their loss grids
    lang_maps = _targets(bundle, lang_spec, train, progress)
    align_maps = _targets(bundle, align_spec, train, progress)
    targets = {}
    for i in train:
        lang_maps[i] = F.normalize(lang_maps[i], dim=0)  # unit per cell, like the head's output (the pyramid is already)
        a_grid = tuple(align_maps[i].shape[-2:])
        l_grid = a_grid if cfg.loss_grid == "alignment" else tuple(lang_maps[i].shape[-2:])
        targets[i] = (resample(lang_maps[i], l_grid), align_maps[i])
    del lang_maps, align_maps
    ckpt = scene_dir / "fields" / FMGSField.method / CHECKPOINT
    if not (resume and ckpt.is_file()):  # (a resumed run loads its heads)
        field_.init_output_biases(torch.stack([targets[i][0].mean((1, 2)) for i in train]).mean(0),
                                  torch.stack([targets[i][1].mean((1, 2)) for i in train]).mean(0))

    generator = torch.Generator().manual_seed(cfg.seed)
    start, elapsed = 0, 0.0
    if resume and ckpt.is_file():
        try:
            state = torch.load(ckpt, weights_only=True)
        except Exception as err:  # torch raises several types for damaged files; name the file
            raise FieldError(f"{ckpt}: cannot read the checkpoint ({err}); delete it to start afresh") from err
        _check_resume(ckpt, state, cfg, field_, lookup.rows)
        with torch.no_grad():
            compact.copy_(state["compact"])
        field_.heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, elapsed = int(state["step"]), float(state["seconds"])
        if progress:
            tqdm.write(f"{ckpt}: resuming at step {start} of {cfg.steps}")
    elif resume and progress:
        tqdm.write(f"{ckpt}: no checkpoint to resume from; starting afresh")

    t0 = time.perf_counter()
    parts, history = {}, []
    every = max(1, cfg.steps // 20)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="fmgs", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        i = train[int(torch.randint(len(train), (1,), generator=generator))]
        cam = data.cameras[i]
        cam_r = camera_at(cam, (max(2, round(cam.width * cfg.render_scale)), max(2, round(cam.height * cfg.render_scale))))
        res = field_.splat_features(field_.grid.encode_frozen(lookup, compact), cam_r)
        pixels = res.image.flatten(1).T
        hw = (cam_r.height, cam_r.width)
        lang, basis = field_.language_with_basis(pixels)
        lang, basis = lang.T.reshape(-1, *hw), basis.T.reshape(-1, *hw)
        align = field_.decode(field_.align_alias, pixels).T.reshape(-1, *hw)
        lang_t, align_t = targets[i]
        loss, huber, mse = fmgs_loss(resample(lang, lang_t.shape[-2:]), lang_t, resample(align, align_t.shape[-2:]),
                                     align_t, cfg)
        pa = None
        if pixel_align_on(step, cfg):
            pa = pixel_alignment_loss(basis, align)  # = on the language map itself (same cosines), cheaper
            loss = loss + cfg.pixel_align_weight * pa
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        parts = {"loss": loss.item(), "language_huber": huber.item(), "alignment_mse": mse.item(),
                 "pixel_align": None if pa is None else pa.item()}
        if step % every == 0 or step == cfg.steps - 1:
            history.append({"step": step, **{k: (None if v is None else round(v, 6)) for k, v in parts.items()}})
        if step % 10 == 0:
            bar.set_postfix(loss=f"{parts['loss']:.4g}", lang=f"{parts['language_huber']:.3g}",
                            align=f"{parts['alignment_mse']:.3g}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            state = {"step": done, "seconds": elapsed + time.perf_counter() - t0, "config": _config_json(cfg),
                     "num_gaussians": len(bundle.gaussians), "spaces": [s.to_json() for s in spaces],
                     "rows": lookup.rows, "compact": compact.detach(), "heads": field_.heads.state_dict(),
                     "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
            atomic.write_with(ckpt, lambda tmp: torch.save(state, tmp))
    bar.close()

    with torch.no_grad():
        field_.grid.table[lookup.rows] = compact.detach()
    seconds = elapsed + time.perf_counter() - t0
    field_.summary = {
        "steps": cfg.steps, "fit_seconds": round(seconds, 2),
        "seconds_per_step": round((time.perf_counter() - t0) / max(cfg.steps - start, 1), 4),
        "resumed_from_step": start or None,
        "final": parts or None,
        "history": history,
        "carriers": int(field_.carriers()[0].sum()), "num_gaussians": len(bundle.gaussians),
        "grid_rows_touched": len(lookup.rows), "grid_rows_total": field_.grid.layout.rows,
        "language_grid": list(targets[train[0]][0].shape[-2:]), "alignment_grid": list(targets[train[0]][1].shape[-2:]),
    }
    field_.eval()
    field_.save(scene_dir)
    if ckpt.exists():
        ckpt.unlink()
    return field_


__all__ = [
    "CHECKPOINT", "Config", "DEFAULT_MODELS", "FIELD", "FMGSField", "build_spaces", "fit", "fmgs_loss", "lr_at",
    "mlp", "neighbour_cosines", "pixel_align_on", "pixel_alignment_loss", "resample",
]
