"""M3 memory banks (Algorithm 1 and the fast streaming bank) and Gaussian memory attention."""

from __future__ import annotations

import math

import pytest
import torch

from fmsplat.fields.memory import (
    MemoryBank,
    flatten_views,
    memory_attention,
    similarity_reduction,
)


def memory_attention_direct(q, projection, bank, temperature=0.05):
    """The attention written plainly (the official form): the reference for the chunked one."""
    e = q @ projection.to(q.dtype)
    b = bank.to(q.dtype)
    def unit(x):
        return x / (x.norm(dim=-1, keepdim=True) + 1e-6)

    sim = unit(e) @ unit(b).T
    return torch.softmax(sim / temperature, dim=-1) @ b


def _angles(*degrees) -> torch.Tensor:
    r = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(r), torch.sin(r)], 1).float()


TAU30 = math.cos(math.radians(30))  # rows closer than 30 degrees are "similar"


def _slow_algorithm1(x: torch.Tensor, tau: float) -> list[int]:
    """Algorithm 1 transcribed row by row (the reference for the chunked numba version)."""
    u = torch.nn.functional.normalize(x.float(), dim=1)
    sim = u @ u.T
    used = torch.zeros(len(x), dtype=torch.bool)
    kept = []
    for j in range(len(x)):
        if used[j]:
            continue
        s = torch.nonzero(sim[j] >= tau).squeeze(1)
        if not used[s].any():
            kept.append(j)
            used[s] = True
    return kept


def test_algorithm1_separated_clusters_keep_first_of_each():
    # three tight clusters, rows interleaved; raw features keep their scale
    x = _angles(0, 90, 200, 2, 92, 198, 1) * torch.arange(1.0, 8.0)[:, None]
    idx = similarity_reduction(x, TAU30)
    assert idx.tolist() == [0, 1, 2]
    # the bank holds the raw (not normalised) rows
    assert torch.allclose(x[idx], x[[0, 1, 2]])


def test_algorithm1_official_quirk_leaves_a_row_uncovered():
    # a=0, b=25, c=50 degrees: a keeps and marks {a, b}; c's neighbourhood {b, c} touches the used b,
    # so c is skipped without being kept or marked although no kept row is within 30 degrees of it.
    x = _angles(0, 25, 50)
    idx, counts = similarity_reduction(x, TAU30, return_counts=True)
    assert idx.tolist() == [0]
    assert counts.tolist() == [2]
    bank = MemoryBank.from_tensors(x[idx], TAU30)
    best, _ = bank.best_match(x)
    assert best[2] < TAU30  # uncovered
    # the fast bank covers every row (a and c are entries, b is covered by a)
    fast = MemoryBank.from_rows(x, TAU30)
    assert torch.allclose(fast.raw, x[[0, 2]])
    assert fast.counts.tolist() == [2, 1]
    assert fast.coverage(x)["covered"] == 1.0


def test_algorithm1_zero_rows_are_kept_as_the_official_code_does():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.99, 0.01], [0.0, 0.0]])
    assert similarity_reduction(x, 0.9).tolist() == [0, 1, 3]
    # the fast bank has nothing to match a zero row with and leaves it out
    assert len(MemoryBank.from_rows(x, 0.9)) == 1


@pytest.mark.parametrize("chunk", [1, 7, 5000])
def test_algorithm1_matches_row_by_row_reference_for_any_chunk(chunk):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 16, generator=g)
    x = centres[torch.randint(12, (300,), generator=g)] + 0.35 * torch.randn(300, 16, generator=g)
    ref = _slow_algorithm1(x, 0.8)
    assert similarity_reduction(x, 0.8, chunk=chunk).tolist() == ref
    # a memory budget below one full row still gives the same answer (chunks of one row)
    assert similarity_reduction(x, 0.8, max_block_bytes=16).tolist() == ref


def test_fast_bank_covers_everything_and_is_comparable_to_algorithm1():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(20, 32, generator=g)
    x = centres[torch.randint(20, (2000,), generator=g)] + 0.25 * torch.randn(2000, 32, generator=g)
    tau = 0.8
    alg1 = MemoryBank.from_rows(x, tau, method="algorithm1")
    fast = MemoryBank.from_rows(x, tau, method="fast", block=128, max_block_bytes=4096)
    # coverage: every feature has a fast-bank entry with cos >= tau
    best, _ = fast.best_match(x)
    assert bool((best >= tau - 1e-6).all())
    assert fast.coverage(x)["covered"] == 1.0
    assert alg1.coverage(x)["covered"] <= 1.0
    # entries are pairwise below tau, like Algorithm 1's kept rows
    for bank in (alg1, fast):
        u = torch.nn.functional.normalize(bank.raw, dim=1)
        sim = u @ u.T - 2 * torch.eye(len(bank))
        assert float(sim.max()) < tau
    # comparable size (same order of magnitude) and the counts account for every row
    assert len(alg1) <= len(fast) <= 4 * len(alg1)
    assert int(fast.counts.sum()) == 2000
    # bank rows are raw rows of x
    assert all(bool((x == r).all(1).any()) for r in fast.raw)


def test_fast_bank_is_sequential_leader_clustering_whatever_the_block():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 8, generator=g)
    tau = 0.5
    # the rule row by row: a row becomes an entry when no entry so far is within tau
    u = torch.nn.functional.normalize(x, dim=1)
    entries = []
    for j in range(len(x)):
        if not entries or float((u[entries] @ u[j]).max()) < tau:
            entries.append(j)
    for block, scan in ((1, 1), (13, 5), (4096, 1024)):
        bank = MemoryBank.from_rows(x, tau, block=block, scan_chunk=scan)
        assert torch.equal(bank.raw, x[entries]), block
        # every row is counted once, for an entry within tau
        assert int(bank.counts.sum()) == len(x) and bool((bank.counts >= 1).all())


def test_streaming_add_equals_building_at_once():
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(6, 5, 4, generator=g) for _ in range(5)]  # (D, h, w) feature maps
    whole = MemoryBank.from_rows(flatten_views(views), 0.6)
    stream = MemoryBank(6, 0.6, block=7)
    new_total = 0
    for v in views:
        new = stream.add(flatten_views([v]))
        new_total += len(new)
        assert len(stream) == new_total
    assert torch.equal(stream.raw, whole.raw)
    assert int(stream.counts.sum()) == int(whole.counts.sum()) == 100
    assert stream.rows_seen == whole.rows_seen == 100
    # a later frame that repeats earlier content adds nothing
    assert len(stream.add(flatten_views([views[2]]))) == 0
    assert len(stream) == len(whole)


def test_bank_errors_name_the_problem():
    with pytest.raises(ValueError, match="tau"):
        MemoryBank(4, 1.5)
    with pytest.raises(ValueError, match="channels"):
        MemoryBank(4, 0.5).add(torch.randn(3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        similarity_reduction(torch.tensor([[float("nan"), 1.0]]), 0.5)
    with pytest.raises(ValueError, match="method"):
        MemoryBank.from_rows(torch.randn(3, 2), 0.5, method="nope")


# ---------------------------------------------------------------------------------------- attention
def test_attention_matches_direct_implementation():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(257, 8, generator=g)
    w = torch.randn(8, 48, generator=g)
    bank = torch.randn(33, 48, generator=g) * 3
    direct = memory_attention_direct(q, w, bank, 0.05)
    # written out once more with no shared helper
    e = q @ w
    cos = (e @ bank.T) / ((e.norm(dim=1, keepdim=True) + 1e-6) * (bank.norm(dim=1)[None] + 1e-6))
    plain = torch.softmax(cos / 0.05, dim=1) @ bank
    assert torch.allclose(direct, plain, atol=1e-5)
    for chunk in (None, 1, 50):
        assert torch.allclose(memory_attention(q, w, bank, 0.05, chunk=chunk), plain, atol=1e-4)
    # outputs are convex combinations of bank rows: inside the rows' bounding box
    out = memory_attention(q, w, bank, 0.05)
    assert bool((out <= bank.max(0).values + 1e-4).all() and (out >= bank.min(0).values - 1e-4).all())
    # a sharp temperature picks the best-matching entry
    sharp = memory_attention(q, w, bank, 1e-4)
    top2 = cos.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.01  # rows without a near tie
    assert int(clear.sum()) > 200
    assert torch.allclose(sharp[clear], bank[cos.argmax(1)][clear], atol=1e-3)


def test_attention_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: memory_attention(a, b, c, 0.5, chunk=4), (q, w, bank))
    assert torch.autograd.gradcheck(lambda a, b, c: memory_attention(a, b, c, 0.05), (q, w, bank))


def test_attention_errors():
    with pytest.raises(ValueError, match="empty"):
        memory_attention(torch.randn(2, 3), torch.randn(3, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="chain"):
        memory_attention(torch.randn(2, 3), torch.randn(2, 4), torch.randn(5, 4))
