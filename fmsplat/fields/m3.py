"""M3, 3D Spatial MultiModal Memory (Zou et al., ICLR 2025): memory banks of raw foundation-model
features, low-dimensional principal queries on the Gaussians, and Gaussian memory attention.

For each model m (a feature space), the raw pixel features of all training views are reduced to a
memory bank (its principal scene components, fmsplat.fields.memory). Every Gaussian carries one
principal-query vector (``query_dim`` = 160 values in the paper, sliced per model); one rasterizer
pass renders all slices; model m's slice q_m of a pixel reads its bank as

    e = q_m W_m,   feature = softmax(cos(e, bank_m) / 0.05) @ bank_m

with W_m (c_m × D_m) drawn from N(0, 1) and kept fixed, as the official code does (the paper reads as
if it were learned: ``learn_projection=True``; ``projection_init="pca"`` takes the bank's principal
directions instead, see principal_projection). A rendered feature is therefore always a convex
combination of features the model really produced, in the model's own space, so its text encoder
applies unchanged.

Training (per step one random training view): the rendered queries and the teacher's map are both
sampled bilinearly at `n_points` random points (the official point_sample: how Q is "resized to the
teacher's grid"); per model the loss is ``feature_weight · ((1 - cos) + MSE)`` over points whose
target is non-zero. By default the trained 3DGS geometry is frozen; ``joint=True`` fine-tunes the
Gaussians too (no densification) with the 3DGS photometric loss, colour and queries in one pass
(the official code trains everything jointly from scratch for 30,000 iterations).

The paper's query learning rate (5e-4) barely moves the N(0, 1) queries in a few hundred steps: the
`cpu` preset uses 0.05. Nor can a fixed random W serve a 16-dim query on a 1280-d space: cos(qW, b) sees
only b's component in W's 16-dim row space, 1.3% of the bank's energy (c / D), so the logits stay within a
few temperatures of each other and the attention is a blur of the bank. The `cpu` preset therefore takes
W from the bank's principal directions (``projection_init="pca"``: the most energy any c rows keep) and
pre-fits the queries to the lifted features (``warm_start``; bench/README.md, "M3's
projection"). Banks (fmsplat.fields.memory): Algorithm 1 (official, O(P²) in the P pixel
features) or ``fast`` (equally tight, covers every feature, bounded memory, grows with new views),
cached in SCENE/memory/<extractor key>.safetensors with their tau, method and views.

Embedded models (not in the paper's tables) take the query dims and thresholds of the roles they play
(M3Config.slice_dims / taus): effnet (1280-d, language-aligned) CLIP's 16 dims and tau 0.80,
effnet-mid DINOv2's 32 and 0.75 — the knee of the bank-size / coverage trade-off on the bench scene
(bench/README.md, "Fields: per-step cost and M3 memory banks") — and effnet-labels LLaMA3's 32.
The paper's language space (LLaMA3 embeddings of region captions painted into each region, tau 1.0)
is played by ``effnet-labels`` (fmsplat.foundation.effnet): every stride-32 cell holds the MiniLM
embedding of its recognised ImageNet label, text queries go through MiniLM. Its maps are piecewise
constant, so its bank is one entry per distinct label; tau is 0.99, not 1.00: an exact duplicate
can fall short of itself by float rounding (fp16 cache), and Algorithm 1 would keep every such row.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from fmsplat.fields.base import FeatureField, FieldError, FieldRender, SpaceSpec, camera_at, \
    parse_spaces, resample, splat
from fmsplat.fields.configs import M3Config as Config
from fmsplat.fields.loop import CHECKPOINT, finish, fit_entry, run_fit, scene_identity
from fmsplat.fields.memory import MemoryBank, attention_chunk_rows, attention_keys, attention_logits, flatten_views, \
    memory_attention, nonzero_rows, read_bank, write_bank
from fmsplat.gaussians import GaussianModel
from fmsplat.gaussians.losses import rgb_loss
from fmsplat.parallel import resolve_address
from fmsplat.workspace import Workspace
from fmsplat.fields.base import feature_cache, teacher_maps

DEFAULT_MODELS = ("effnet", "effnet-mid", "effnet-labels")
LIFT_SCALE, LIFT_MIN_WEIGHT = 0.25, 1e-3  # the warm start lifts as LiftConfig's defaults


def _lookup(table: dict, spec: SpaceSpec, default):
    """A model's entry by alias, then by family (the name before ':')."""
    for key in (spec.alias, spec.name.split(":", 1)[0]):
        if key in table:
            return table[key]
    return default


def slice_layout(config: Config, spaces: list[SpaceSpec]) -> dict[str, slice]:
    """alias -> slice of the principal-query vector, in space order."""
    out, start = {}, 0
    for spec in spaces:
        c = int(_lookup(config.slice_dims, spec, config.default_slice))
        out[spec.alias] = slice(start, start + c)
        start += c
    if start > config.query_dim:
        raise FieldError(f"m3: the query slices {({a: s.stop - s.start for a, s in out.items()})} need {start} dims, "
                         f"more than query_dim={config.query_dim}; raise query_dim or lower slice_dims")
    return out


def tau_of(config: Config, spec: SpaceSpec) -> float:
    return float(_lookup(config.taus, spec, config.default_tau))


# ------------------------------------------------------------------------------------------ field
class M3Field(FeatureField):
    method = "m3"
    config_class = Config
    per_gaussian = ("queries",)

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

    # -- interface
    def splat_raw(self, camera):
        return splat(self.gaussians, self.queries, camera)

    def decode_image(self, alias, image):
        """(C, h, w) rendered queries -> (D_m, h, w): memory attention of model `alias`'s slice."""
        return self.attend(alias, image[self.slices[alias]].flatten(1).T).T.reshape(-1, *image.shape[1:])

    def attend_top_k(self, alias: str, q: torch.Tensor, k: int) -> torch.Tensor:
        """`attend` over each row's k highest-scoring bank entries only (logits at c per entry, then k x D
        per row instead of K x D)."""
        bank = self.bank(alias)
        keys, gram = attention_keys(self.projection(alias).float(), bank)
        out = []
        for s in range(0, q.shape[0], 1024):
            v, idx = attention_logits(q[s:s + 1024].float(), keys, gram, self.config.temperature).topk(k, dim=1)
            out.append(torch.einsum("pk,pkd->pd", torch.softmax(v, dim=1), bank[idx]))
        return torch.cat(out) if out else q.new_zeros(0, bank.shape[1])

    def gaussian_features(self, space: str) -> torch.Tensor:
        """(N, D) attention output of every Gaussian's own query; over the top `query_top_k` bank entries
        when set (as relevancy maps), else the whole bank."""
        self.space(space)
        k = self.config.query_top_k
        with torch.no_grad():
            q = self.queries[:, self.slices[space]]
            if 0 < k < self.bank(space).shape[0]:
                return self.attend_top_k(space, q, k)
            return self.attend(space, q)

    def norm_basis(self, space: str) -> torch.Tensor:
        """(K, r) coordinates of the bank's entries on its top r = `query_rank` principal directions (right
        singular vectors): |a @ bank|^2 ~ |a @ coords|^2 for attention weights a, exact when r reaches the
        bank's rank (r = 0: the bank itself). Computed once per space (principal_directions)."""
        bank = self.bank(space)
        r = self.config.query_rank
        if r <= 0 or r >= min(bank.shape):
            return bank
        cache = self.__dict__.setdefault("_norm_bases", {})
        key = (space, r, bank.data_ptr(), tuple(bank.shape))  # a new rank or a reloaded bank: a new basis
        if key not in cache:
            cache[key] = (bank @ principal_directions(bank, r)).contiguous()
        return cache[key]

    def attended_text_dots(self, space: str, q: torch.Tensor, texts: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """For (P, c) queries of `space` and unit texts (T, D): the dot products (T, P) of the texts with the
        attended features f = a @ bank and their squared norms (P,), never forming f. t.f = a @ (bank t)
        exactly; |f|^2 through `norm_basis` (exact when `query_rank` is 0). With `query_top_k`, each row
        keeps its k largest logits and |f|^2 = a G a over them (G the bank's Gram matrix)."""
        bank = self.bank(space)
        cfg = self.config
        keys, gram = attention_keys(self.projection(space).float(), bank)
        bank_text = bank @ texts.float().T  # (K, T)
        k = cfg.query_top_k
        dots, sq = [], []
        if 0 < k < bank.shape[0]:
            bank_gram = bank @ bank.T  # (K, K)
            for s in range(0, q.shape[0], 16384):
                v, idx = attention_logits(q[s:s + 16384], keys, gram, cfg.temperature).topk(k, dim=1)
                a = torch.softmax(v, dim=1)  # (p, k)
                dots.append(torch.einsum("pk,pkt->tp", a, bank_text[idx]))
                sq.append(torch.einsum("pk,pl,pkl->p", a, a, bank_gram[idx[:, :, None], idx[:, None, :]]))
        else:
            basis = self.norm_basis(space)
            rows = attention_chunk_rows(bank.shape[0], basis.shape[1] + bank_text.shape[1], cfg.max_block_mb << 20)
            for s in range(0, q.shape[0], rows):
                a = torch.softmax(attention_logits(q[s:s + rows], keys, gram, cfg.temperature), dim=1)
                dots.append((a @ bank_text).T)
                y = a @ basis
                sq.append((y * y).sum(1))
        return torch.cat(dots, 1), torch.cat(sq)

    def render_text_dots(self, camera, space, texts, size=None):
        """Relevancy inputs (FeatureField.render_text_dots) as the paper attends: the rendered queries of
        `space` are area-averaged to `query_scale` of the map's resolution (the paper resizes them to the
        teacher's grid), attention runs there (attended_text_dots: no D-dimensional feature is formed),
        and the dot products and squared norms are upsampled bilinearly to the map (t.f is linear in f, so
        the dots are those of the upsampled features; the norms are an upper bound at edges). Alpha and
        depth stay at full resolution. query_scale 1 and query_rank 0: the exact per-pixel attention."""
        cfg = self.config
        cam = camera_at(camera, size)
        hw = (cam.height, cam.width)
        grid = (max(1, round(hw[0] * cfg.query_scale)), max(1, round(hw[1] * cfg.query_scale)))
        with torch.no_grad():
            res = splat(self.gaussians, self.queries[:, self.slices[space]], cam)
            q = resample(res.image, grid).flatten(1).T.float()
            dots, sq = self.attended_text_dots(space, q, texts)
            dots, sq = dots.reshape(-1, *grid), sq.reshape(1, *grid)
            if grid != hw:
                dots, sq = resample(dots, hw), resample(sq, hw)
        return dots, sq[0].clamp_min(0), FieldRender({}, res.alpha, res.expected_depth(), cam)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, alias in enumerate(self.spaces):  # a saved field brings its banks: take their sizes
            if f"bank{i}" not in tensors:
                raise FieldError(f"m3 field: saved tensors lack 'bank{i}' (the memory bank of '{alias}')")
            setattr(self, f"bank{i}", torch.empty_like(tensors[f"bank{i}"]))
        self.load_state_dict(tensors)

    def footprint(self) -> dict:
        """Bytes held by the field (float32), besides the Gaussians' geometry."""
        banks = {a: int(self.bank(a).numel() * 4) for a in self.spaces}
        proj = sum(int(self.projection(a).numel() * 4) for a in self.spaces)
        q = int(self.queries.numel() * 4)
        return {"queries_bytes": q, "bytes_per_gaussian": int(self.queries.shape[1] * 4), "banks_bytes": banks,
                "projections_bytes": proj, "total_bytes": q + proj + sum(banks.values())}


FIELD = M3Field


# ------------------------------------------------------------------------------------------ banks
def build_bank(bundle: Workspace, spec: SpaceSpec, maps: dict[str, torch.Tensor], config: Config,
               progress: bool = True, ray: str | None = None) -> tuple[MemoryBank, dict]:
    """The memory bank of `spec` over the training views (`maps`: view name -> (D, h, w), in view order).

    Cached in SCENE/memory/<key>.safetensors with its tau, method and views: reused when they match;
    a 'fast' bank built on some of the views grows by the missing ones (streaming) instead of being
    rebuilt. Zero feature rows (no target) are left out. `ray`: Algorithm 1's similarity chunks run on
    that Ray cluster (the same bank)."""
    tau = tau_of(config, spec)
    method = config.bank_method
    names = list(maps)
    path = bundle.bank_path(spec.key)
    cached = read_bank(path)
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
        bank = MemoryBank.from_rows(x, tau, method=method, progress=progress, max_block_bytes=block,
                                    ray=ray if method == "algorithm1" else None, workers=config.workers or None)
    seconds = time.perf_counter() - t0
    info = {"key": spec.key, "alias": spec.alias, "tau": tau, "method": method, "views": names,
            "rows_seen": int(bank.rows_seen)}
    if reused != "cached":
        write_bank(path, bank, info)
    rows = flatten_views([maps[n] for n in names])
    stats = {"entries": len(bank), "rows": int(nonzero_rows(rows).sum()), "tau": tau, "method": method,
             "source": reused, "seconds": round(seconds, 3), "bytes": bank.nbytes, **bank.coverage(rows)}
    return bank, stats


# ------------------------------------------------------------------------------------------ projection
def principal_directions(bank: torch.Tensor, r: int) -> torch.Tensor:
    """(D, r) orthonormal columns: the bank's top r uncentred principal directions (those keeping the most
    of its entries' energy, mean included), largest first, signs fixed (positive sum) so that a slightly
    different bank gives nearby directions. r <= D."""
    b = bank.double()
    _, vecs = torch.linalg.eigh(b.T @ b)  # ascending
    top = vecs[:, -r:].flip(1)
    return (top * torch.where(top.sum(0) < 0, -1.0, 1.0)).float().contiguous()


def principal_projection(bank: torch.Tensor, c: int) -> torch.Tensor:
    """(c, D) W whose rows are the bank's top c principal directions, each scaled to sqrt(D) like a random
    N(0, 1) row (the queries' learning rate keeps its meaning).

    Why: cos(qW, b) only sees b's component in W's row space. Random rows keep about c / D of the bank's
    energy (1.3% for 16 of 1280 dims: each entry's norm shrinks to ~11%), so every logit stays within a few
    multiples of the temperature and the attention cannot single out an entry; principal rows keep the
    most any c rows can (bench/README.md, "M3's projection")."""
    d = bank.shape[1]
    if c > d:
        raise FieldError(f"m3: projection_init=pca needs a query slice of at most the space's {d} dims, got {c}")
    return (principal_directions(bank, c).T * d ** 0.5).contiguous()


# ------------------------------------------------------------------------------------------ warm start
WARM_BATCH = 4096
WARM_RANK = 128  # the pre-fit's loss is computed in the bank's top principal directions (exact at full rank)
WARM_LR = 0.05


def fit_queries(field_: M3Field, alias: str, targets: torch.Tensor, steps: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict]:
    """Queries (n, c) whose memory attention over the bank of `alias` reproduces `targets` (n, D), without
    rendering: the training's own feature loss, (1 - cos) + MSE, minimised by Adam over batches of
    WARM_BATCH rows from the least-squares solution of q W = t. The attended feature a @ bank is never
    formed: with V the bank's top WARM_RANK principal directions, f.t = (a @ bank V).(V^T t) and
    |f|^2 = |a @ bank V|^2 (exact when the bank's rank is at most WARM_RANK), so a step costs
    K x (c + r) per row, not K x D. `one_minus_cos_start/_end` in the returned statistics are exact (the
    whole attention) on the first WARM_BATCH rows."""
    bank = field_.bank(alias).float()
    w = field_.projection(alias).detach().float()
    temperature, dim = field_.config.temperature, bank.shape[1]
    v = principal_directions(bank, min(WARM_RANK, dim))
    coords, t_coords = bank @ v, targets.float() @ v  # (K, r), (n, r)
    t_sq = (targets.float() ** 2).sum(1)
    keys, gram = attention_keys(w, bank)
    q = targets.float() @ w.T @ torch.linalg.inv(w @ w.T)  # least squares: q W = t
    # attention is blind to a query's length: give each row the length of an N(0, 1) row, so that Adam's
    # step (and the render fine-tuning's lr_queries) means the same as for random queries
    q = (q / q.norm(dim=1, keepdim=True).clamp_min(1e-12) * q.shape[1] ** 0.5).requires_grad_(True)
    opt = torch.optim.Adam([q], lr=WARM_LR)
    valid = t_sq > 1e-12

    def exact_one_minus_cos():
        rows = torch.arange(min(len(q), WARM_BATCH))[valid[:WARM_BATCH]]
        with torch.no_grad():
            out = memory_attention(q[rows], w, bank, temperature)
        return round(float((1 - F.cosine_similarity(out, targets[rows].float(), dim=-1)).mean()), 4)

    start = exact_one_minus_cos()
    for _ in range(steps):
        rows = torch.randint(len(q), (min(WARM_BATCH, len(q)),), generator=generator)
        rows = rows[valid[rows]]
        if rows.numel() == 0:
            continue
        y = torch.softmax(attention_logits(q[rows], keys, gram, temperature), dim=1) @ coords
        ft, ff, tt = (y * t_coords[rows]).sum(1), (y * y).sum(1), t_sq[rows]
        cos = ft / (ff * tt).clamp_min(1e-12).sqrt()
        loss = ((1 - cos) + (ff - 2 * ft + tt) / dim).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return q.detach(), {"one_minus_cos_start": start, "one_minus_cos_end": exact_one_minus_cos()}


def warm_start(field_: M3Field, bundle: Workspace, targets: dict, cfg: Config, progress: bool) -> dict:
    """Every seen Gaussian's queries pre-fitted to its lifted feature (fields.lift over `warm_dim` principal
    components per model, then fit_queries); unseen Gaussians keep their random queries."""
    from fmsplat.fields.latent import pca_basis
    from fmsplat.fields.lift import lift_spaces

    t0 = time.perf_counter()
    views = bundle.dataset.train_indices
    bases = {a: pca_basis([targets[a][i] for i in views], cfg.warm_dim) for a in field_.spaces}
    latents, weights, slices = lift_spaces(bundle, targets, bases, LIFT_SCALE, progress=progress)
    seen = weights >= LIFT_MIN_WEIGHT
    generator = torch.Generator().manual_seed(cfg.seed)
    stats = {}
    for alias, (w, b) in bases.items():
        lifted = latents[seen][:, slices[alias]] @ w.T + b
        q, stats[alias] = fit_queries(field_, alias, lifted, cfg.warm_steps, generator)
        with torch.no_grad():
            field_.queries[seen, field_.slices[alias]] = q
    return {"warm_seconds": round(time.perf_counter() - t0, 2), "warm_seen_gaussians": int(seen.sum()),
            "warm_fit": stats}


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


def _as_model(p: dict, sh_degree: int) -> GaussianModel:
    return GaussianModel(means=p["means"], quats=p["quats"], scales=p["scales"], opacities=p["opacities"],
                         sh=torch.cat([p["sh0"], p["shN"]], 1), sh_degree=sh_degree)


def _fit(scene_dir, models, cfg: Config, resume: bool, progress: bool, bundle: Workspace | None) -> M3Field:
    """Fit M3 on the trained scene `scene_dir` and save SCENE/fields/m3/ (see the module docstring).

    models: extractor names (default effnet, effnet-mid, effnet-labels); config / preset / overrides:
    fields.configs.M3Config. Checkpoints and `resume` (same settings; `steps` may grow): fields.loop."""
    from fmsplat.reconstruct.configs import TrainConfig

    bundle = bundle or Workspace.open(scene_dir)
    spaces = parse_spaces(models, DEFAULT_MODELS, "m3")
    data = bundle.dataset
    if not data.train_indices:
        raise FieldError(f"{scene_dir}: the dataset has no training views")
    slice_layout(cfg, spaces)  # fail on a bad layout before any extraction
    ray = resolve_address(cfg.ray or None)
    if ray is not None:  # extraction on the cluster; the caches then serve the rest
        for spec in spaces:
            feature_cache(bundle, spec, progress, ray=ray, workers=cfg.workers or None)
    targets = teacher_maps(bundle, spaces, progress)

    t_bank = time.perf_counter()
    banks, bank_stats = {}, {}
    for spec in spaces:
        maps = {bundle.view_name(i): targets[spec.alias][i] for i in data.train_indices}
        bank, bank_stats[spec.alias] = build_bank(bundle, spec, maps, cfg, progress, ray)
        banks[spec.alias] = bank.raw.clone()
    bank_seconds = time.perf_counter() - t_bank

    torch.manual_seed(cfg.seed)
    field_ = M3Field(bundle.gaussians, spaces, cfg, banks)
    if cfg.projection_init == "pca":
        with torch.no_grad():
            for alias, sl in field_.slices.items():
                field_.projection(alias).copy_(principal_projection(field_.bank(alias), sl.stop - sl.start))
    warm = warm_start(field_, bundle, targets, cfg, progress) if cfg.warm_start else {}
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
        geometry = bundle.gaussians.trainable()
        # fine-tuning a converged 3DGS: positions at the 3DGS schedule's final rate, the rest at theirs
        lrs = {"means": tc.lr_means_final * extent, "quats": tc.lr_quats, "scales": tc.lr_scales,
               "opacities": tc.lr_opacities, "sh0": tc.lr_sh0, "shN": tc.lr_shN}
        groups += [{"params": [geometry[k]], "lr": lr, "name": k} for k, lr in lrs.items()]
        background = torch.as_tensor((bundle.meta.get("train_config") or {}).get("background", (0.0, 0.0, 0.0)),
                                     dtype=torch.float32)
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    ema = {"loss": None}

    def loss(step, i, generator):
        cam = data.cameras[i].scaled(cfg.render_scale)
        total = torch.zeros(())
        if cfg.joint:
            model = _as_model(geometry, sh_degree)
            image = splat(model.activated(), torch.cat([model.colors(cam.center), field_.queries], 1), cam,
                          background=torch.cat([background, torch.zeros(field_.queries.shape[1])])).image
            gt = torch.tensor(data.image(i), dtype=torch.float32).permute(2, 0, 1)[None]
            if tuple(gt.shape[-2:]) != tuple(image.shape[-2:]):
                gt = F.interpolate(gt, size=image.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            total = total + rgb_loss(image[:3].permute(1, 2, 0), gt[0].permute(1, 2, 0), cfg.ssim_weight)
            qimage = image[3:]
        else:
            qimage = splat(bundle.gaussians, field_.queries, cam).image
        for alias in field_.spaces:
            pts = sample_points(cfg.n_points, generator)
            q = point_sample(qimage[field_.slices[alias]], pts)
            target = point_sample(targets[alias][i], pts)
            total = total + feature_loss(field_.attend(alias, q), target, cfg.feature_weight)
        value = float(total.detach())
        ema["loss"] = value if ema["loss"] is None else 0.9 * ema["loss"] + 0.1 * value
        return total, {"loss_ema": ema["loss"]}

    def load(state):
        field_.load_state_dict(state["field"])
        for k, v in state["geometry"].items():
            geometry[k].data.copy_(v)
        ema["loss"] = state["loss_ema"]

    scene = scene_identity(bundle, spaces, banks={a: len(b) for a, b in banks.items()})
    run = run_fit(method="m3", scene_dir=scene_dir, config=cfg, scene=scene, views=data.train_indices,
                  optimizer=optimizer, loss=loss, load=load, resume=resume, progress=progress, field=field_,
                  state=lambda: {"field": field_.state_dict(), "loss_ema": ema["loss"],
                                 "geometry": {k: v.detach() for k, v in geometry.items()}})
    if cfg.joint:
        field_.gaussians = _as_model({k: v.detach() for k, v in geometry.items()}, sh_degree)
        field_.owns_geometry = True
    field_.summary = {
        **run, **warm, "warm_start": cfg.warm_start, "bank_seconds": round(bank_seconds, 2), "final_loss_ema": ema["loss"], "joint": cfg.joint,
        "query_dims": {a: s.stop - s.start for a, s in field_.slices.items()},
        "banks": bank_stats, "memory": field_.footprint(),
    }
    finish(field_, scene_dir)
    return field_


fit = fit_entry("m3", _fit)

__all__ = ["CHECKPOINT", "Config", "FIELD", "M3Field", "build_bank", "feature_loss", "fit", "fit_queries", "point_sample", "principal_projection",
           "sample_points", "slice_layout", "tau_of", "warm_start"]
