"""M3 memory banks ("principal scene components", PSC) and Gaussian memory attention.

A memory bank of one foundation model is a set of its *raw* pixel features, chosen so that every
feature of the scene has a near-duplicate (cosine >= tau) in it. Two ways to build one:

``similarity_reduction`` — Algorithm 1 of M3 exactly as the official code runs it. L2-normalise the
P pixel features of all training views (flattened (P, D), view after view, row-major within a view);
in chunks of rows compute ``chunk @ allᵀ``; for each row j (in order) that is not yet *used*,
S = {k : sim(j, k) >= tau} (j itself included when its self-similarity reaches tau); when no member
of S is used, keep j and mark all of S used; otherwise skip j *without* marking anything. That last
branch is the official quirk: a row whose neighbourhood merely touches a used row is dropped even
when no kept row is within tau of it, so Algorithm 1 guarantees only a two-hop cover (every row is
within tau of a used row, which is within tau of a kept row) and leaves some rows uncovered. Other
consequences reproduced as they are: zero rows (normalised to zero) have an empty S and are all kept;
with tau = 1.0 a row is only in its own S when its float32 self-similarity rounds to >= 1. The result
does not depend on the chunk size (only the time and memory do), so chunks are sized to a memory
budget; the scan over each similarity row runs in numba. Time and memory are O(P²·D) and
O(chunk·P): fine for a few thousand rows, hopeless for hundreds of views at a fine stride.

``MemoryBank.add`` — the fast, streaming variant: sequential leader clustering against the growing
bank. Rows are taken in the same order; a row becomes a bank entry when its best cosine to the
entries so far is below tau. It runs in blocks: one block's best match against the bank (in bank
chunks), then a greedy pass among the block's still-uncovered rows. The result is exactly that of the
row-by-row rule, whatever the block size, and adding views in several batches gives the same bank as
adding them at once (streaming: new frames extend a bank without rebuilding it). Every row ends up
with an entry at cosine >= tau (a one-hop cover, stronger than Algorithm 1's), entries are pairwise
below tau (as Algorithm 1's kept rows are), and the cost is O(P·K·D) for a bank of K entries, with
memory bounded by block × bank chunk — never the P × P matrix. Zero rows (no feature: padding,
unpainted regions) cannot be matched by a cosine and are not added. The scan against the bank goes
newest entries first and drops a row as soon as an entry is within tau, so covered rows (most of
them: neighbouring pixels, consecutive frames) rarely meet the whole bank.

``memory_attention`` — ``softmax(cos(q W, bank) / T) @ bank`` (M3's Gaussian memory attention), with
the cosine computed as the official code does (vectors divided by norm + 1e-6). Because
cos(qW, b) = q (W b̂ᵀ) / |qW| and |qW|² = q (W Wᵀ) qᵀ, the similarities are computed from the small
c × K matrix W b̂ᵀ and the c × c Gram matrix instead of the D-dimensional embedding: identical values,
D/c times fewer operations. Rows are processed in chunks bounded by a memory budget.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from tqdm.auto import tqdm

DEFAULT_CHUNK = 5000  # rows per similarity chunk in the official Algorithm 1
DEFAULT_BLOCK_BYTES = 256 << 20  # memory budget of one similarity block (bytes)
COS_EPS = 1e-6  # official: x / (|x| + 1e-6)


def _as_rows(features, name: str = "features") -> torch.Tensor:
    x = torch.as_tensor(features)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected (P, D) rows, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating point features, got {x.dtype}")
    x = x.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: {int((~torch.isfinite(x)).sum())} non-finite values")
    return x


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not -1.0 <= tau <= 1.0:
        raise ValueError(f"similarity threshold tau must lie in [-1, 1], got {tau}")
    return tau


def flatten_views(maps) -> torch.Tensor:
    """(D, h, w) feature maps of several views -> (P, D) rows, view after view, row-major in a view."""
    rows = [torch.as_tensor(m).reshape(m.shape[0], -1).T for m in maps]
    if not rows:
        raise ValueError("flatten_views: no feature maps given")
    dims = {r.shape[1] for r in rows}
    if len(dims) != 1:
        raise ValueError(f"flatten_views: feature maps disagree on the channel count ({sorted(dims)})")
    return torch.cat(rows).float()


def nonzero_rows(x: torch.Tensor) -> torch.Tensor:
    """Bool mask of rows that hold a feature (any non-zero value)."""
    return (x != 0).any(dim=1)


# ----------------------------------------------------------------------------------- Algorithm 1
@njit(cache=True)
def _alg1_chunk(sim, used, start, tau, kept, counts):  # pragma: no cover - compiled
    c, p = sim.shape
    for r in range(c):
        j = start + r
        if used[j]:
            continue
        touched = False
        for k in range(p):
            if sim[r, k] >= tau and used[k]:
                touched = True
                break
        if touched:
            continue  # the official quirk: j is neither kept nor marked
        kept[j] = True
        n = 0
        for k in range(p):
            if sim[r, k] >= tau:
                used[k] = True
                n += 1
        counts[j] = n


@njit(cache=True)
def _alg1_lists(offsets, neighbours, used, start, kept, counts):  # pragma: no cover - compiled
    """_alg1_chunk on the rows' lists of neighbours within tau (CSR: row r's are neighbours[offsets[r]:offsets[r+1]])."""
    for r in range(offsets.shape[0] - 1):
        j = start + r
        if used[j]:
            continue
        touched = False
        for e in range(offsets[r], offsets[r + 1]):
            if used[neighbours[e]]:
                touched = True
                break
        if touched:
            continue
        kept[j] = True
        for e in range(offsets[r], offsets[r + 1]):
            used[neighbours[e]] = True
        counts[j] = offsets[r + 1] - offsets[r]


class _NeighbourLists:
    """A Ray worker of similarity_reduction: each task is one chunk of rows, answered as their neighbours
    within tau (CSR), the O(chunk x P x D) part of Algorithm 1; the order-dependent scan stays on the driver."""

    def __init__(self, unit: torch.Tensor, tau: float, chunk: int) -> None:
        self.unit, self.tau, self.chunk = unit, tau, chunk

    def rows(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        within = (self.unit[start:start + self.chunk] @ self.unit.T).numpy() >= np.float32(self.tau)
        r, k = np.nonzero(within)
        offsets = np.zeros(within.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=within.shape[0]), out=offsets[1:])
        return offsets, k.astype(np.int64)


def similarity_reduction(features, tau: float, chunk: int = DEFAULT_CHUNK, max_block_bytes: int = DEFAULT_BLOCK_BYTES,
                         progress: bool = False, return_counts: bool = False, ray: str | None = None,
                         workers: int | None = None):
    """Algorithm 1 of M3 (official behaviour, see the module docstring): indices of the kept rows.

    features: (P, D) raw pixel features (flatten_views of all training views). The bank is
    ``features[indices]`` (raw, not normalised). `chunk` rows per similarity block (official 5,000),
    lowered when chunk × P float32 would exceed `max_block_bytes` — the result is the same. With
    `return_counts`, also returns how many rows each kept row marked used (its |S|). With `ray` (a
    cluster address, fmsplat.parallel), the similarity chunks are Ray tasks returning each row's
    neighbours within tau, and the scan runs here on them in row order: the same bank."""
    x = _as_rows(features)
    tau = _check_tau(tau)
    p = x.shape[0]
    if chunk < 1:
        raise ValueError(f"similarity_reduction: chunk must be >= 1, got {chunk}")
    chunk = int(max(1, min(chunk, max_block_bytes // max(1, 4 * p))))
    unit = F.normalize(x, dim=1)
    used = np.zeros(p, dtype=np.bool_)
    kept = np.zeros(p, dtype=np.bool_)
    counts = np.zeros(p, dtype=np.int64)
    starts = list(range(0, p, chunk))
    desc = f"memory bank (Algorithm 1, tau={tau:g})"
    if ray is not None:
        from fmsplat.parallel import map_views

        arrived: dict[int, tuple] = {}
        scanned = [0]  # chunks scanned so far: the scan needs them in order, they arrive in any order

        def scan(k: int, lists) -> None:
            arrived[k] = lists
            while scanned[0] in arrived:
                offsets, neighbours = arrived.pop(scanned[0])
                _alg1_lists(offsets, neighbours, used, starts[scanned[0]], kept, counts)
                scanned[0] += 1

        map_views(lambda w=_NeighbourLists(unit, tau, chunk): w, "rows", starts, scan, address=ray, workers=workers,
                  progress=progress, desc=desc)
    else:
        for start in tqdm(starts, desc=desc, unit="chunk", disable=not progress, dynamic_ncols=True):
            sim = (unit[start:start + chunk] @ unit.T).numpy()
            _alg1_chunk(sim, used, start, np.float32(tau), kept, counts)
    idx = torch.from_numpy(np.flatnonzero(kept))
    if return_counts:
        return idx, torch.from_numpy(counts[kept])
    return idx


# ----------------------------------------------------------------------------------- fast bank
@njit(cache=True)
def _leaders(adj, is_leader):  # pragma: no cover - compiled
    """Greedy in order over a U x U boolean 'within tau' matrix: row i leads when no earlier leader covers it."""
    u = adj.shape[0]
    covered = np.zeros(u, dtype=np.bool_)
    for i in range(u):
        if covered[i]:
            continue
        is_leader[i] = True
        for k in range(i, u):
            if adj[i, k]:
                covered[k] = True


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + COS_EPS)


class MemoryBank:
    """A growing bank of raw features of one model (see the module docstring for the rule).

    raw: (K, D) float32 entries as the model produced them; counts: (K,) how many offered rows were
    counted for each entry (every non-zero row once, for one entry within tau: a statistic that
    depends on batch boundaries, unlike the entries); rows_seen: rows offered so far (zero rows
    included)."""

    def __init__(self, dim: int, tau: float, block: int = 2048, max_block_bytes: int = DEFAULT_BLOCK_BYTES,
                 scan_chunk: int = 1024) -> None:
        if dim < 1:
            raise ValueError(f"MemoryBank: dim must be >= 1, got {dim}")
        if block < 1:
            raise ValueError(f"MemoryBank: block must be >= 1, got {block}")
        self.dim = int(dim)
        self.tau = _check_tau(tau)
        self.block = int(block)
        self.max_block_bytes = int(max_block_bytes)
        self.scan_chunk = max(1, int(scan_chunk))
        self.rows_seen = 0
        self._set(torch.zeros(0, self.dim), torch.zeros(0, dtype=torch.int64))

    # storage grows by doubling, so streaming many small batches costs amortised O(1) per entry
    def _set(self, raw: torch.Tensor, counts: torch.Tensor) -> None:
        self._n = raw.shape[0]
        self._raw, self._units, self._counts = raw.contiguous(), _unit(raw).contiguous(), counts.contiguous()

    def _append(self, raw: torch.Tensor, units: torch.Tensor) -> None:
        need = self._n + raw.shape[0]
        if need > self._raw.shape[0]:
            cap = max(need, 2 * self._raw.shape[0], 64)

            def grow(t: torch.Tensor) -> torch.Tensor:
                return torch.cat([t[: self._n], t.new_zeros((cap - self._n,) + tuple(t.shape[1:]))])

            self._raw, self._units, self._counts = grow(self._raw), grow(self._units), grow(self._counts)
        self._raw[self._n:need], self._units[self._n:need] = raw, units
        self._counts[self._n:need] = 0
        self._n = need

    @property
    def raw(self) -> torch.Tensor:
        """(K, D) raw entries (a view of the bank's storage)."""
        return self._raw[: self._n]

    @property
    def counts(self) -> torch.Tensor:
        """(K,) rows covered by each entry (a view of the bank's storage)."""
        return self._counts[: self._n]

    # -- construction
    @classmethod
    def from_rows(cls, features, tau: float, method: str = "fast", progress: bool = False, ray: str | None = None,
                  workers: int | None = None, **kw) -> "MemoryBank":
        """A bank of (P, D) rows built by `method`: 'fast' (streaming greedy) or 'algorithm1' (official; its
        similarity chunks on a Ray cluster when `ray` is an address)."""
        x = _as_rows(features)
        bank = cls(x.shape[1], tau, **kw)
        if method == "fast":
            if ray is not None:
                raise ValueError("the 'fast' bank is one sequential pass and does not run on Ray; use "
                                 "bank_method=algorithm1 with ray, or leave ray unset")
            bank.add(x, progress=progress)
        elif method == "algorithm1":
            idx, counts = similarity_reduction(x, tau, max_block_bytes=bank.max_block_bytes, progress=progress,
                                               return_counts=True, ray=ray, workers=workers)
            bank._set(x[idx].clone(), counts)
            bank.rows_seen = x.shape[0]
        else:
            raise ValueError(f"unknown memory-bank method '{method}'; choose 'fast' or 'algorithm1'")
        return bank

    @classmethod
    def from_tensors(cls, raw: torch.Tensor, tau: float, counts: torch.Tensor | None = None, rows_seen: int = 0,
                     **kw) -> "MemoryBank":
        raw = _as_rows(raw, "bank")
        bank = cls(raw.shape[1], tau, **kw)
        counts = (counts.to(torch.int64).clone() if counts is not None
                  else torch.ones(raw.shape[0], dtype=torch.int64))
        if counts.shape != (raw.shape[0],):
            raise ValueError(f"MemoryBank: counts shape {tuple(counts.shape)} does not match {raw.shape[0]} entries")
        bank._set(raw.clone(), counts)
        bank.rows_seen = int(rows_seen)
        return bank

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self.raw.numel() * self.raw.element_size()

    def _bank_chunk(self, rows: int) -> int:
        return max(1, self.max_block_bytes // max(1, 4 * rows))

    def best_match(self, features) -> tuple[torch.Tensor, torch.Tensor]:
        """(best cosine, entry index) of every row against the bank; -inf / -1 when the bank is empty.

        Cosines as the attention computes them (norm + 1e-6); chunked over rows and entries."""
        x = _as_rows(features)
        if x.shape[1] != self.dim:
            raise ValueError(f"MemoryBank: rows have {x.shape[1]} channels, the bank {self.dim}")
        p = x.shape[0]
        best = torch.full((p,), -math.inf)
        arg = torch.full((p,), -1, dtype=torch.int64)
        for s in range(0, p, self.block):
            u = _unit(x[s:s + self.block])
            b_best, b_arg = self._match_unit(u)
            best[s:s + self.block], arg[s:s + self.block] = b_best, b_arg
        return best, arg

    def _match_unit(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact best match of unit rows against every entry (chunks bounded by the memory budget)."""
        best = torch.full((u.shape[0],), -math.inf)
        arg = torch.full((u.shape[0],), -1, dtype=torch.int64)
        step = self._bank_chunk(u.shape[0])
        for k in range(0, len(self), step):
            v, i = (u @ self._units[k:min(k + step, self._n)].T).max(dim=1)
            better = v > best
            best = torch.where(better, v, best)
            arg = torch.where(better, i + k, arg)
        return best, arg

    def _cover_unit(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which unit rows have an entry within tau, and one such entry (else the best, below tau).

        Entries are scanned newest first in chunks of `scan_chunk`, and a row leaves the scan as soon as
        one is within tau: neighbouring pixels and consecutive frames are mostly covered by recent
        entries, so only the rows that become entries meet the whole bank."""
        best = torch.full((u.shape[0],), -math.inf)
        arg = torch.full((u.shape[0],), -1, dtype=torch.int64)
        active = torch.arange(u.shape[0])
        step = min(self.scan_chunk, self._bank_chunk(u.shape[0]))
        stop = self._n
        while stop > 0 and active.numel():
            start = max(0, stop - step)
            v, i = (u[active] @ self._units[start:stop].T).max(dim=1)
            better = v > best[active]
            best[active] = torch.where(better, v, best[active])
            arg[active] = torch.where(better, i + start, arg[active])
            active = active[best[active] < self.tau]
            stop = start
        return best, arg

    def coverage(self, features) -> dict:
        """How well the bank covers `features` (zero rows left out): the fraction within tau of an entry,
        and the mean / minimum best cosine."""
        x = _as_rows(features)
        x = x[nonzero_rows(x)]
        if x.shape[0] == 0 or len(self) == 0:
            nan = float("nan")
            return {"rows": int(x.shape[0]), "covered": 0.0, "mean_best_cos": nan, "min_best_cos": nan}
        best, _ = self.best_match(x)
        # the bank's own rows may score 1 - 1e-7; allow float rounding at the threshold
        return {"rows": int(x.shape[0]), "covered": float((best >= self.tau - 1e-5).float().mean()),
                "mean_best_cos": float(best.mean()), "min_best_cos": float(best.min())}

    # -- streaming growth
    def add(self, features, progress: bool = False) -> torch.Tensor:
        """Offer (P, D) rows in order; rows farther than tau from every entry become entries.

        Returns the indices (into `features`) of the rows that became entries. Zero rows are skipped."""
        x = _as_rows(features)
        if x.shape[1] != self.dim:
            raise ValueError(f"MemoryBank: rows have {x.shape[1]} channels, the bank {self.dim}")
        p = x.shape[0]
        new_idx = []
        blocks = range(0, p, self.block)
        bar = tqdm(blocks, desc=f"memory bank (fast, tau={self.tau:g})", unit="block", disable=not progress,
                   dynamic_ncols=True)
        for s in bar:
            xb = x[s:s + self.block]
            live = torch.nonzero(nonzero_rows(xb)).squeeze(1)
            if live.numel() == 0:
                continue
            u = _unit(xb[live])
            best, arg = self._cover_unit(u)
            fresh = torch.nonzero(best < self.tau).squeeze(1)
            n_old = len(self)
            if fresh.numel():
                uf = u[fresh]
                is_leader = np.zeros(len(fresh), dtype=np.bool_)
                _leaders((uf @ uf.T >= self.tau).numpy(), is_leader)
                lead = fresh[torch.from_numpy(is_leader)]  # positions among the live rows, in order
                # count each row for an entry within tau: the one the scan found, or a better one among
                # the block's leaders up to and including itself
                sim = u @ u[lead].T
                sim[lead[None, :] > torch.arange(len(live))[:, None]] = -math.inf
                b_new, a_new = sim.max(dim=1)
                take = b_new > best
                arg = torch.where(take, a_new + n_old, arg)
                rows = live[lead]
                self._append(xb[rows], u[lead])
                new_idx.append(rows + s)
            self._counts[: self._n] += torch.bincount(arg, minlength=len(self))
            bar.set_postfix(entries=len(self))
        bar.close()
        self.rows_seen += p
        return torch.cat(new_idx) if new_idx else torch.zeros(0, dtype=torch.int64)


# ----------------------------------------------------------------------------------- attention
def attention_chunk_rows(bank_size: int, dim: int, max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Rows per attention chunk so that the (rows x K) weights and (rows x D) output fit the budget."""
    return max(1, int(max_block_bytes // max(1, 4 * (bank_size + dim))))


def memory_attention(q: torch.Tensor, projection: torch.Tensor, bank: torch.Tensor, temperature: float = 0.05,
                     chunk: int | None = None, max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> torch.Tensor:
    """Gaussian memory attention: ``softmax(cos(q W, bank) / T) @ bank``.

    q: (P, c) principal queries; projection W: (c, D); bank: (K, D) raw features. Returns (P, D).
    Differentiable w.r.t. all three; the dtype follows q (float64 for gradcheck)."""
    if q.ndim != 2 or projection.ndim != 2 or bank.ndim != 2:
        raise ValueError(f"memory_attention: q (P, c), W (c, D), bank (K, D) expected, got "
                         f"{tuple(q.shape)}, {tuple(projection.shape)}, {tuple(bank.shape)}")
    if q.shape[1] != projection.shape[0] or projection.shape[1] != bank.shape[1]:
        raise ValueError(f"memory_attention: shapes do not chain: q {tuple(q.shape)}, W {tuple(projection.shape)}, "
                         f"bank {tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise ValueError("memory_attention: the memory bank is empty")
    if not temperature > 0:
        raise ValueError(f"memory_attention: temperature must be positive, got {temperature}")
    b = bank.to(q.dtype)
    keys, gram = attention_keys(projection.to(q.dtype), b)
    rows = chunk or attention_chunk_rows(b.shape[0], b.shape[1], max_block_bytes)
    out = []
    for s in range(0, q.shape[0], rows):
        out.append(torch.softmax(attention_logits(q[s:s + rows], keys, gram, temperature), dim=-1) @ b)
    return torch.cat(out) if out else q.new_zeros(0, b.shape[1])


def attention_keys(projection: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys (c, K), gram (c, c)) of W (c, D) and a bank (K, D): cos(q W, bank_k) = (q keys)_k / sqrt(q gram qᵀ),
    so the attention's logits cost c per bank entry, never D."""
    return projection @ _unit(bank).T, projection @ projection.T


def attention_logits(q: torch.Tensor, keys: torch.Tensor, gram: torch.Tensor, temperature: float) -> torch.Tensor:
    """(P, K) logits cos(q W, bank) / T of the memory attention for queries q (P, c)."""
    norm = ((q @ gram) * q).sum(-1).clamp_min(0).sqrt()
    return (q @ keys) / ((norm + COS_EPS)[:, None] * temperature)


# ------------------------------------------------------------------------------------------ bank files
def read_bank(path: Path) -> tuple[MemoryBank, dict] | None:
    """A cached bank and its info (tau, method, views, ...), or None when absent or unreadable (rebuilt)."""
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


def write_bank(path: Path, bank: MemoryBank, info: dict) -> None:
    from safetensors.torch import save_file

    from fmsplat import atomic

    tensors = {"bank": bank.raw.clone(), "counts": bank.counts.clone()}
    atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata={"info": json.dumps(info)}))


__all__ = [
    "DEFAULT_CHUNK", "MemoryBank", "attention_chunk_rows", "flatten_views", "memory_attention",
    "nonzero_rows", "read_bank", "similarity_reduction", "write_bank",
]
