"""Numba kernels of the CPU tile rasterizer: binning, forward compositing, hand-written backward.

Layout: each 16x16 tile owns a depth-sorted list of the Gaussians whose (opacity-aware)
bounding box touches it. A tile is composited with the Gaussian loop outside and the pixel
loop inside, restricted to the Gaussian's own bounding box: most Gaussians cover a few
pixels, so this skips most of the 256 per-pixel tests the classic per-pixel loop pays.
Tiles run in parallel (prange) in a shuffled order so that heavy tiles spread over threads.

The backward walks each tile's list back to front, rebuilding transmittance by division
(as 3DGS does), and accumulates per-Gaussian gradients in per-thread buffers, which are
summed afterwards: no atomics, no races.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

TILE = 16
TILE_PIXELS = TILE * TILE
# float32 constants keep the hot loops in single precision (mixing in Python floats
# would promote every pixel's arithmetic to float64).
ALPHA_MIN = np.float32(1.0 / 255.0)
ALPHA_MAX = np.float32(0.99)
T_MIN = np.float32(1e-4)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)


EDGE_EPS = 0.05  # px of slack on exact extents, so float rounding never drops a pixel


@njit(cache=True, inline="always")
def cutoff_sigma(opacity):
    """alpha = o·exp(-sigma) >= 1/255  <=>  sigma <= ln(255·o)."""
    return math.log(max(opacity * 255.0, 1e-30))


@njit(cache=True, inline="always")
def row_span(dy, mx, ca, cb, cc, cutoff, x_lo, x_hi):
    """Pixel columns [lo, hi] of one row where the ellipse sigma <= cutoff can lie.

    Solves ½a·dx² + b·dy·dx + ½c·dy² = cutoff for dx; empty span when lo > hi.
    """
    disc = dy * dy * (cb * cb - ca * cc) + 2.0 * ca * cutoff
    if disc < 0.0:
        return 1, 0
    half = math.sqrt(disc) / ca
    centre = mx - cb * dy / ca - 0.5
    lo = max(x_lo, int(math.ceil(centre - half - EDGE_EPS)))
    hi = min(x_hi, int(math.floor(centre + half + EDGE_EPS)))
    return lo, hi


@njit(cache=True)
def argsort_stable(keys):
    """The stable argsort of float32 `keys` (what torch.argsort(stable=True) returns, ties in index
    order): an LSD radix sort over the keys' bits, 4 passes of 8 bits, linear in N. The depth sort of
    100k Gaussians took 8 ms a render with torch, 2 ms here (bench/README.md, "One 3DGS step")."""
    n = keys.shape[0]
    bits = keys.view(np.uint32)
    ukey = np.empty(n, np.uint32)
    for i in range(n):  # IEEE floats as unsigned integers of the same order: flip negatives, set positives' sign bit
        b = bits[i]
        if b == np.uint32(0x80000000):  # -0.0 sorts with 0.0, as a comparison sort has it
            b = np.uint32(0)
        ukey[i] = b ^ np.uint32(0xFFFFFFFF) if b >> np.uint32(31) else b | np.uint32(0x80000000)
    # Each pass's digit histogram does not depend on the order: all four in one sweep, as start offsets.
    starts = np.zeros((4, 257), np.int64)
    for i in range(n):
        for p in range(4):
            starts[p, ((ukey[i] >> np.uint32(8 * p)) & np.uint32(255)) + 1] += 1
    idx = np.arange(n).astype(np.int64)
    tmp = np.empty(n, np.int64)
    for p in range(4):
        cursor = np.cumsum(starts[p])
        for i in range(n):
            d = (ukey[idx[i]] >> np.uint32(8 * p)) & np.uint32(255)
            tmp[cursor[d]] = idx[i]
            cursor[d] += 1
        idx, tmp = tmp, idx
    return idx


@njit(cache=True)
def bin_gaussians(means2d, conics, opacities, order, width, height, tiles_x, tiles_y):
    """Tile lists in depth order.

    order: indices of the visible Gaussians sorted front to back. Returns (offsets (T+1,),
    ids (M,), pixel_box (N, 4) = x0, x1, y0, y1 inclusive, empty where x0 > x1): the exact
    axis-aligned box of the ellipse where the Gaussian's alpha can reach 1/255.
    """
    n_total = means2d.shape[0]
    n_tiles = tiles_x * tiles_y
    pixel_box = np.empty((n_total, 4), dtype=np.int32)
    pixel_box[:, 0] = 1
    pixel_box[:, 1] = 0
    pixel_box[:, 2] = 1
    pixel_box[:, 3] = 0
    counts = np.zeros(n_tiles + 1, dtype=np.int64)
    for k in range(order.shape[0]):
        g = order[k]
        cutoff = cutoff_sigma(opacities[g])
        if cutoff <= 0.0:
            continue
        ca = conics[g, 0]
        cb = conics[g, 1]
        cc = conics[g, 2]
        det = ca * cc - cb * cb
        if det <= 0.0:
            continue
        # Extents of {d : ½dᵀQd <= cutoff} along x and y: sqrt(2·cutoff·Σxx), Σ = Q⁻¹.
        hx = math.sqrt(2.0 * cutoff * cc / det)
        hy = math.sqrt(2.0 * cutoff * ca / det)
        mx = means2d[g, 0]
        my = means2d[g, 1]
        # Pixel centres are at j + 0.5.
        fx0 = max(0.0, math.ceil(mx - hx - 0.5 - EDGE_EPS))
        fx1 = min(width - 1.0, math.floor(mx + hx - 0.5 + EDGE_EPS))
        fy0 = max(0.0, math.ceil(my - hy - 0.5 - EDGE_EPS))
        fy1 = min(height - 1.0, math.floor(my + hy - 0.5 + EDGE_EPS))
        if fx0 > fx1 or fy0 > fy1:
            continue
        x0 = int(fx0)
        x1 = int(fx1)
        y0 = int(fy0)
        y1 = int(fy1)
        pixel_box[g, 0] = x0
        pixel_box[g, 1] = x1
        pixel_box[g, 2] = y0
        pixel_box[g, 3] = y1
        for ty in range(y0 // TILE, y1 // TILE + 1):
            for tx in range(x0 // TILE, x1 // TILE + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    ids = np.empty(offsets[-1], dtype=np.int32)
    for k in range(order.shape[0]):
        g = order[k]
        if pixel_box[g, 0] > pixel_box[g, 1]:
            continue
        for ty in range(pixel_box[g, 2] // TILE, pixel_box[g, 3] // TILE + 1):
            for tx in range(pixel_box[g, 0] // TILE, pixel_box[g, 1] // TILE + 1):
                t = ty * tiles_x + tx
                ids[cursor[t]] = g
                cursor[t] += 1
    return offsets, ids, pixel_box


@njit(parallel=True, cache=True, fastmath=True)
def rasterize_forward(offsets, ids, means2d, conics, opacities, feats, pixel_box, width, height, tiles_x, tile_order):
    """Front-to-back compositing of `feats` (N, C). Returns (out (H,W,C), T_final (H,W), n_used (H,W)).

    n_used[p] is how many entries of its tile's list the pixel walked through before it
    stopped (the backward pass replays exactly those).
    """
    n_ch = feats.shape[1]
    out = np.zeros((height, width, n_ch), dtype=np.float32)
    t_final = np.ones((height, width), dtype=np.float32)
    n_used = np.zeros((height, width), dtype=np.int32)
    for i in prange(tile_order.shape[0]):
        tile = tile_order[i]
        tx0 = (tile % tiles_x) * TILE
        ty0 = (tile // tiles_x) * TILE
        tx1 = min(tx0 + TILE, width) - 1
        ty1 = min(ty0 + TILE, height) - 1
        n_pix = (tx1 - tx0 + 1) * (ty1 - ty0 + 1)
        trans = np.ones(TILE_PIXELS, dtype=np.float32)
        acc = np.zeros((TILE_PIXELS, n_ch), dtype=np.float32)
        used = np.zeros(TILE_PIXELS, dtype=np.int32)
        done = np.zeros(TILE_PIXELS, dtype=np.bool_)
        n_done = 0
        start = offsets[tile]
        for k in range(start, offsets[tile + 1]):
            g = ids[k]
            gx0 = max(pixel_box[g, 0], tx0)
            gx1 = min(pixel_box[g, 1], tx1)
            gy0 = max(pixel_box[g, 2], ty0)
            gy1 = min(pixel_box[g, 3], ty1)
            mx = means2d[g, 0]
            my = means2d[g, 1]
            ca = conics[g, 0]
            cb = conics[g, 1]
            cc = conics[g, 2]
            op = opacities[g]
            cutoff = cutoff_sigma(op)
            for py in range(gy0, gy1 + 1):
                dy = np.float32(py) + HALF - my
                row = (py - ty0) * TILE
                lo, hi = row_span(dy, mx, ca, cb, cc, cutoff, gx0, gx1)
                for px in range(lo, hi + 1):
                    p = row + px - tx0
                    if done[p]:
                        continue
                    dx = np.float32(px) + HALF - mx
                    sigma = HALF * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < ZERO:
                        continue
                    alpha = min(ALPHA_MAX, op * math.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    t_next = trans[p] * (ONE - alpha)
                    if t_next < T_MIN:
                        done[p] = True
                        n_done += 1
                        continue
                    w = alpha * trans[p]
                    for c in range(n_ch):
                        acc[p, c] += w * feats[g, c]
                    trans[p] = t_next
                    used[p] = k - start + 1
            if n_done == n_pix:
                break
        for py in range(ty0, ty1 + 1):
            for px in range(tx0, tx1 + 1):
                p = (py - ty0) * TILE + px - tx0
                t_final[py, px] = trans[p]
                n_used[py, px] = used[p]
                for c in range(n_ch):
                    out[py, px, c] = acc[p, c]
    return out, t_final, n_used


@njit(parallel=True, cache=True, fastmath=True)
def rasterize_backward(
    offsets, ids, means2d, conics, opacities, feats, pixel_box, width, height, tiles_x, tile_order,
    t_final, n_used, grad_out, grad_alpha, n_threads,
):
    """Per-thread gradient buffers: feats (n_threads, N, C) and geometry (n_threads, N, 6) =
    d/d(mean x, mean y, conic a, conic b, conic c, opacity). The caller sums over threads.

    grad_out (H,W,C) is dL/d(out) and grad_alpha (H,W) is dL/d(1 - T_final).
    """
    n_total = means2d.shape[0]
    n_ch = feats.shape[1]
    buf_feats = np.zeros((n_threads, n_total, n_ch), dtype=np.float32)
    buf_geom = np.zeros((n_threads, n_total, 6), dtype=np.float32)  # mx, my, ca, cb, cc, opacity
    for i in prange(tile_order.shape[0]):
        tid = numba.get_thread_id()
        tile = tile_order[i]
        tx0 = (tile % tiles_x) * TILE
        ty0 = (tile // tiles_x) * TILE
        tx1 = min(tx0 + TILE, width) - 1
        ty1 = min(ty0 + TILE, height) - 1
        trans = np.ones(TILE_PIXELS, dtype=np.float32)
        # behind[p]: dL/dT-weighted sum of everything composited after the current Gaussian,
        # relative to the transmittance just behind it. Starts as the alpha output's term.
        behind = np.zeros(TILE_PIXELS, dtype=np.float32)
        used = np.zeros(TILE_PIXELS, dtype=np.int32)
        gpix = np.zeros((TILE_PIXELS, n_ch), dtype=np.float32)
        max_used = 0
        for py in range(ty0, ty1 + 1):
            for px in range(tx0, tx1 + 1):
                p = (py - ty0) * TILE + px - tx0
                trans[p] = t_final[py, px]
                behind[p] = -grad_alpha[py, px]
                used[p] = n_used[py, px]
                max_used = max(max_used, used[p])
                for c in range(n_ch):
                    gpix[p, c] = grad_out[py, px, c]
        start = offsets[tile]
        # Per-Gaussian sums over this tile's pixels live in locals and reach the thread's
        # buffer once per (Gaussian, tile), not once per pixel.
        g_feat = np.zeros(n_ch, dtype=np.float32)
        for k in range(start + max_used - 1, start - 1, -1):
            g = ids[k]
            pos = k - start
            gx0 = max(pixel_box[g, 0], tx0)
            gx1 = min(pixel_box[g, 1], tx1)
            gy0 = max(pixel_box[g, 2], ty0)
            gy1 = min(pixel_box[g, 3], ty1)
            mx = means2d[g, 0]
            my = means2d[g, 1]
            ca = conics[g, 0]
            cb = conics[g, 1]
            cc = conics[g, 2]
            op = opacities[g]
            cutoff = cutoff_sigma(op)
            g_mx = ZERO
            g_my = ZERO
            g_ca = ZERO
            g_cb = ZERO
            g_cc = ZERO
            g_op = ZERO
            touched = False
            for py in range(gy0, gy1 + 1):
                dy = np.float32(py) + HALF - my
                row = (py - ty0) * TILE
                lo, hi = row_span(dy, mx, ca, cb, cc, cutoff, gx0, gx1)
                for px in range(lo, hi + 1):
                    p = row + px - tx0
                    if pos >= used[p]:
                        continue
                    dx = np.float32(px) + HALF - mx
                    sigma = HALF * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < ZERO:
                        continue
                    gauss = math.exp(-sigma)
                    raw_alpha = op * gauss
                    alpha = min(ALPHA_MAX, raw_alpha)
                    if alpha < ALPHA_MIN:
                        continue
                    if not touched:
                        touched = True
                        g_feat[:] = ZERO
                    t_before = trans[p] / (ONE - alpha)
                    dot = ZERO
                    w = alpha * t_before
                    for c in range(n_ch):
                        dot += feats[g, c] * gpix[p, c]
                        g_feat[c] += w * gpix[p, c]
                    d_alpha = t_before * (dot - behind[p])
                    behind[p] = alpha * dot + (ONE - alpha) * behind[p]
                    trans[p] = t_before
                    if raw_alpha < ALPHA_MAX:
                        d_sigma = -d_alpha * raw_alpha
                        g_mx -= d_sigma * (ca * dx + cb * dy)
                        g_my -= d_sigma * (cb * dx + cc * dy)
                        g_ca += d_sigma * HALF * dx * dx
                        g_cb += d_sigma * dx * dy
                        g_cc += d_sigma * HALF * dy * dy
                        g_op += d_alpha * gauss
            if touched:
                for c in range(n_ch):
                    buf_feats[tid, g, c] += g_feat[c]
                buf_geom[tid, g, 0] += g_mx
                buf_geom[tid, g, 1] += g_my
                buf_geom[tid, g, 2] += g_ca
                buf_geom[tid, g, 3] += g_cb
                buf_geom[tid, g, 4] += g_cc
                buf_geom[tid, g, 5] += g_op
    return buf_feats, buf_geom


@njit(parallel=True, cache=True, fastmath=True)
def accumulate_weights(offsets, ids, means2d, conics, opacities, pixel_box, width, height, tiles_x, tile_order,
                       signal, n_threads):
    """The adjoint of compositing features: per Gaussian, the sum over the pixels it reaches of its
    blending weight w (alpha x transmittance, the same rules as `rasterize_forward`) times `signal`
    (H, W, C) at the pixel, and the sum of w alone. Per-thread buffers (n_threads, N, C + 1), the last
    channel the weight; the caller sums over threads."""
    n_total = means2d.shape[0]
    n_ch = signal.shape[2]
    buf = np.zeros((n_threads, n_total, n_ch + 1), dtype=np.float32)
    for i in prange(tile_order.shape[0]):
        tid = numba.get_thread_id()
        tile = tile_order[i]
        tx0 = (tile % tiles_x) * TILE
        ty0 = (tile // tiles_x) * TILE
        tx1 = min(tx0 + TILE, width) - 1
        ty1 = min(ty0 + TILE, height) - 1
        n_pix = (tx1 - tx0 + 1) * (ty1 - ty0 + 1)
        trans = np.ones(TILE_PIXELS, dtype=np.float32)
        done = np.zeros(TILE_PIXELS, dtype=np.bool_)
        n_done = 0
        g_sum = np.zeros(n_ch + 1, dtype=np.float32)
        for k in range(offsets[tile], offsets[tile + 1]):
            g = ids[k]
            gx0 = max(pixel_box[g, 0], tx0)
            gx1 = min(pixel_box[g, 1], tx1)
            gy0 = max(pixel_box[g, 2], ty0)
            gy1 = min(pixel_box[g, 3], ty1)
            mx = means2d[g, 0]
            my = means2d[g, 1]
            ca = conics[g, 0]
            cb = conics[g, 1]
            cc = conics[g, 2]
            op = opacities[g]
            cutoff = cutoff_sigma(op)
            touched = False
            for py in range(gy0, gy1 + 1):
                dy = np.float32(py) + HALF - my
                row = (py - ty0) * TILE
                lo, hi = row_span(dy, mx, ca, cb, cc, cutoff, gx0, gx1)
                for px in range(lo, hi + 1):
                    p = row + px - tx0
                    if done[p]:
                        continue
                    dx = np.float32(px) + HALF - mx
                    sigma = HALF * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                    if sigma < ZERO:
                        continue
                    alpha = min(ALPHA_MAX, op * math.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    t_next = trans[p] * (ONE - alpha)
                    if t_next < T_MIN:
                        done[p] = True
                        n_done += 1
                        continue
                    if not touched:
                        touched = True
                        g_sum[:] = ZERO
                    w = alpha * trans[p]
                    for c in range(n_ch):
                        g_sum[c] += w * signal[py, px, c]
                    g_sum[n_ch] += w
                    trans[p] = t_next
            if touched:
                for c in range(n_ch + 1):
                    buf[tid, g, c] += g_sum[c]
            if n_done == n_pix:
                break
    return buf
