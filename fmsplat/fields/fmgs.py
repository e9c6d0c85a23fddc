"""FMGS (Zuo et al. 2024, arXiv 2401.01970): a hash-grid feature field read at the Gaussians' centres.

The field: FMGS's two multi-resolution hash grids (12 levels each, 16→128 and 128→512, 2^19-row
tables, 8 features per level: 192 features, `fields/hashgrid.py`) are read at the Mip-NeRF-360-
contracted centre of every Gaussian whose opacity exceeds 0.25 (the others carry no features and
are left out of feature renders). Two MLP heads decode the 192 features: the language head (4
hidden layers of 256, ReLU → D, L2-normalised) into the language model's joint space, the alignment
head (1 × 256 → D_align) into the alignment model's space (the paper's CLIP and DINO). The geometry
is the trained 3DGS scene's, frozen.

Render, then decode (the paper's order): the rasterizer splats the 192 hash features and the heads
decode every pixel. Decoding every Gaussian and splatting D = 1280 channels costs the rasterizer
about the same, but runs the 4-layer head on 10⁴–10⁶ Gaussians instead of a few thousand pixels.
`gaussian_features` decodes a Gaussian's own feature (not a blend).

Supervision: the language model's FMGS hybrid multi-scale pyramid (`pyramid`) and the alignment
model's dense map (default `effnet-mid@stride=8`, the DINO ViT-S/8 role: a 12×16 grid on a 128×96
view, fine enough for 3×3 neighbourhoods). Features rendered at `render_scale` of the image size are
decoded, then area-pooled to the loss grid (`loss_grid`): a teacher cell sees its whole receptive
field, so the mean of the rendered pixels over the cell is what it should match. Teachers run once
per view, cached (`<scene>/features/`); the stride-32 effnet map is only 3×4 on a 128×96 view: use
`effnet@input_scale=4` or the pyramid.

Loss: (1 - λ)·MSE(alignment) + λ·Huber_δ(language), each summed over channels and averaged over
pixels (LERF's reduction); after a warm-up, plus the pixel-alignment loss: L1 between the cosines of
every pixel to its 8 neighbours (3×3, reflect padding) on the language map and on the (detached)
alignment map, so the language map learns the alignment map's sharper boundaries.

Our choices where the paper is silent or the CPU budget differs are settings (fields.configs.FMGSConfig:
ε, optimizer, the scene box; the `cpu` preset), plus the heads' last biases starting at the mean target.
Per-step costs: bench/README.md, "Fields: per-step cost and M3 memory banks".

CPU training path: the Gaussians do not move, so their hash-grid corners are resolved once
(`HashGrid.freeze`) and the optimiser sees a compact table of just the rows they touch (identical
to training the full tables: untouched rows get no gradient); the full tables receive the trained
rows at the end and are saved sparsely (they start at zero, so only touched rows are stored).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from fmsplat.fields.base import FeatureField, FieldError, SpaceSpec, \
    param_key as _p, parse_space, resample, splat
from fmsplat.fields.configs import FMGSConfig as Config
from fmsplat.fields.hashgrid import HashGrid, scene_box, to_unit_cube
from fmsplat.fields.loop import CHECKPOINT, finish, fit_entry, run_fit, scene_identity
from fmsplat.workspace import Workspace
from fmsplat.fields.base import teacher_maps

DEFAULT_MODELS = ("effnet", "effnet-mid@stride=8")  # (language model, alignment model)
DECODE_CHUNK = 16384  # pixels or Gaussians per head call


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
        """Start both heads at the mean training target (their last bias; ours): raw alignment features can
        lie far from zero (effnet-mid: |mean| up to ~10), thousands of steps away for a bias moving ~lr a step."""
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

    def splat_raw(self, camera):
        return splat(self.carriers()[1:], self.carrier_features(), camera)

    def decode_image(self, alias, image):
        return self._decode_chunked(alias, image.flatten(1).T).T.reshape(-1, *image.shape[1:])

    def linear_head(self, space, image):
        """The language head ends in o = W·h + b, output o/|o|: relevancy from the 257-d hidden layer instead
        of D = 1280 (its last layer was over half the cost of a relevancy map)."""
        if space != self.language_alias:
            return None
        head = self.heads[_p(space)]
        pixels = image.flatten(1).T
        chunks = [head[:-1](pixels[i:i + DECODE_CHUNK]) for i in range(0, len(pixels), DECODE_CHUNK)]
        return chunks, head[-1].weight, head[-1].bias

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


# ------------------------------------------------------------------------------------------ losses
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


# ------------------------------------------------------------------------------------------ warm start
WARM_BATCH = 2048  # points per pre-fit step: the 4-layer head costs ~3.4 MFLOP per point forward and back
WARM_DIM = 64  # principal components per model in the lifted targets


def warm_start(field_: FMGSField, bundle: Workspace, spaces, maps, lookup, compact, cfg: Config, progress: bool) -> dict:
    """Pre-fit the compact hash table and both heads so that each feature Gaussian's own decoded feature is
    its lifted one (fields.lift: blending-weighted mean of the teacher's pixels over the training views):
    a batched regression over points with the FMGS loss, no rendering."""
    from fmsplat.fields.latent import pca_basis
    from fmsplat.fields.lift import lift_spaces

    t0 = time.perf_counter()
    lang, align = spaces[0].alias, spaces[1].alias
    views = bundle.dataset.train_indices
    unit_lang = {i: F.normalize(maps[lang][i].float(), dim=0) for i in views}  # unit per cell, as the targets
    sources = {lang: [unit_lang.get(i) for i in range(len(maps[lang]))], align: maps[align]}
    bases = {a: pca_basis([sources[a][i] for i in views], WARM_DIM) for a in (lang, align)}
    latents, weights, slices = lift_spaces(bundle, sources, bases, 0.25, progress=progress)
    mask = field_.carriers()[0]
    latents, weights = latents[mask], weights[mask]
    seen = torch.nonzero(weights >= 1e-3).flatten()
    (wl, bl), (wa, ba) = bases[lang], bases[align]
    lang_t = F.normalize(latents[seen][:, slices[lang]] @ wl.T + bl, dim=-1)
    align_t = latents[seen][:, slices[align]] @ wa.T + ba
    opt = torch.optim.Adam([compact, *field_.heads.parameters()], lr=cfg.lr, eps=cfg.eps)
    generator = torch.Generator().manual_seed(cfg.seed)
    first = last = None
    for _ in range(cfg.warm_steps if len(seen) else 0):
        b = torch.randint(len(seen), (min(WARM_BATCH, len(seen)),), generator=generator)
        feats = field_.grid.encode_frozen(lookup, compact, seen[b])
        total, _, _ = fmgs_loss(field_.decode(lang, feats).T, lang_t[b].T, field_.decode(align, feats).T,
                                align_t[b].T, cfg)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        last = float(total.detach())
        first = first if first is not None else last
    return {"warm_seconds": round(time.perf_counter() - t0, 2), "warm_seen_gaussians": int(len(seen)),
            "warm_loss_start": first, "warm_loss_end": last}


# ------------------------------------------------------------------------------------------ training
def build_spaces(models, cfg: Config) -> list[SpaceSpec]:
    """[language space (through the pyramid when cfg.pyramid), alignment space] from two model names."""
    models = list(([m for m in models.split(",") if m.strip()] if isinstance(models, str) else models) or DEFAULT_MODELS)
    if len(models) != 2:
        raise FieldError(f"fmgs: give two models, language then alignment (e.g. {','.join(DEFAULT_MODELS)}); got {models}")
    language = models[0]
    if cfg.pyramid and cfg.pyramid_tile_input:
        language += f"@tile_input={int(cfg.pyramid_tile_input)}"
    return [parse_space(language, pyramid=cfg.pyramid), parse_space(models[1])]


def _fit(scene_dir, models, cfg: Config, resume: bool, progress: bool, bundle: Workspace | None) -> FMGSField:
    """Fit FMGS on the trained scene `scene_dir` (geometry frozen) and save SCENE/fields/fmgs/.

    models: (language model, alignment model), default ("effnet", "effnet-mid@stride=8"); the
    language model is seen through the FMGS pyramid unless `pyramid=False`. Checkpoints and
    `resume`: fields.loop."""
    bundle = bundle or Workspace.open(scene_dir)
    data = bundle.dataset
    if not data.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    spaces = build_spaces(models, cfg)
    train = list(data.train_indices)

    torch.manual_seed(cfg.seed)
    field_ = FMGSField(bundle.gaussians, spaces, cfg)
    field_.fit_box()
    _, means, *_ = field_.carriers()
    lookup = field_.grid.freeze(field_.unit_positions(means))
    compact = torch.nn.Parameter(field_.grid.table.detach()[lookup.rows].clone())
    groups = [{"params": [compact]}, {"params": list(field_.heads.parameters())}]
    if cfg.optimizer == "radam":
        optimizer = torch.optim.RAdam(groups, lr=cfg.lr, eps=cfg.eps)
    else:  # the fused CPU kernel: one pass over the parameters instead of a dozen
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps, fused=True)

    # teachers (cached on disk per view) resampled once onto their loss grids
    maps = teacher_maps(bundle, spaces, progress)
    targets = {}
    for i in train:
        lang = F.normalize(maps[spaces[0].alias][i], dim=0)  # unit per cell, like the head's output
        align = maps[spaces[1].alias][i]
        targets[i] = (resample(lang, align.shape[-2:] if cfg.loss_grid == "alignment" else lang.shape[-2:]), align)
    field_.init_output_biases(torch.stack([targets[i][0].mean((1, 2)) for i in train]).mean(0),
                              torch.stack([targets[i][1].mean((1, 2)) for i in train]).mean(0))
    warm = warm_start(field_, bundle, spaces, maps, lookup, compact, cfg, progress) if cfg.warm_start else {}
    del maps
    history, every = [], max(1, cfg.steps // 20)

    def loss(step, i, generator):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        cam = data.cameras[i].scaled(cfg.render_scale)
        res = splat(field_.carriers()[1:], field_.grid.encode_frozen(lookup, compact), cam)
        pixels = res.image.flatten(1).T
        lang, basis = field_.language_with_basis(pixels)
        lang, basis = lang.T.reshape(-1, *res.image.shape[1:]), basis.T.reshape(-1, *res.image.shape[1:])
        align = field_.decode(field_.align_alias, pixels).T.reshape(-1, *res.image.shape[1:])
        lang_t, align_t = targets[i]
        total, huber, mse = fmgs_loss(resample(lang, lang_t.shape[-2:]), lang_t, resample(align, align_t.shape[-2:]),
                                      align_t, cfg)
        pa = None
        if pixel_align_on(step, cfg):
            pa = pixel_alignment_loss(basis, align)  # = on the language map itself (same cosines), cheaper
            total = total + cfg.pixel_align_weight * pa
        parts = {"language_huber": huber.item(), "alignment_mse": mse.item(),
                 "pixel_align": None if pa is None else pa.item()}
        if step % every == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": round(total.item(), 6),
                            **{k: (None if v is None else round(v, 6)) for k, v in parts.items()}})
        return total, parts

    def load(state):
        with torch.no_grad():
            compact.copy_(state["compact"])
        field_.heads.load_state_dict(state["heads"])

    def sync() -> None:  # the field's table from the compact rows the optimiser trains
        with torch.no_grad():
            field_.grid.table[lookup.rows] = compact.detach()

    run = run_fit(method="fmgs", scene_dir=scene_dir, config=cfg, scene=scene_identity(bundle, spaces),
                  views=train, optimizer=optimizer, loss=loss, resume=resume, progress=progress, load=load,
                  state=lambda: {"compact": compact.detach(), "heads": field_.heads.state_dict()}, field=field_,
                  sync=sync)
    sync()
    field_.summary = {
        **run, **warm, "warm_start": cfg.warm_start, "history": history,
        "carriers": int(field_.carriers()[0].sum()), "num_gaussians": len(bundle.gaussians),
        "grid_rows_touched": len(lookup.rows), "grid_rows_total": field_.grid.layout.rows,
        "language_grid": list(targets[train[0]][0].shape[-2:]), "alignment_grid": list(targets[train[0]][1].shape[-2:]),
    }
    finish(field_, scene_dir)
    return field_


fit = fit_entry("fmgs", _fit)

__all__ = [
    "CHECKPOINT", "Config", "DEFAULT_MODELS", "FIELD", "FMGSField", "build_spaces", "fit", "fmgs_loss", "lr_at",
    "mlp", "neighbour_cosines", "pixel_align_on", "pixel_alignment_loss", "resample",
]
