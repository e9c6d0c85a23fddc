"""Numba kernels of the EWA projection (projection.py's `project_gaussians`, Gaussian by Gaussian) and
its hand-written backward, so that a step builds no torch autograd graph over every Gaussian.

The forward repeats the torch function's arithmetic in float32 (the same clamps: the Jacobian at a
point clamped to 1.3x the field of view, the 0.3 px² low-pass, det clamped at 1e-12, culled Gaussians
kept finite with z = 1). The backward is the chain rule of exactly that arithmetic, clamps included
(a clamped quantity passes no gradient, as torch.clamp does), from d(means2d, conics, depths) to
d(means, quats, scales). tests/test_render.py checks both against torch's autograd of the original.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from fmsplat.render.projection import LOW_PASS, NEAR_PLANE

F0 = np.float32(0.0)
F1 = np.float32(1.0)
F2 = np.float32(2.0)
HALF = np.float32(0.5)
FOV_CLAMP = np.float32(1.3 * 0.5)
LOW = np.float32(LOW_PASS)
DET_MIN = np.float32(1e-12)
QNORM_MIN = np.float32(1e-12)
LOG_MIN = np.float32(1e-12)


@njit(cache=True, inline="always")
def _rotation(qw, qx, qy, qz):
    """The rotation matrix of a unit quaternion, row-major as projection.quat_to_rotmat."""
    return (F1 - F2 * (qy * qy + qz * qz), F2 * (qx * qy - qw * qz), F2 * (qx * qz + qw * qy),
            F2 * (qx * qy + qw * qz), F1 - F2 * (qx * qx + qz * qz), F2 * (qy * qz - qw * qx),
            F2 * (qx * qz - qw * qy), F2 * (qy * qz + qw * qx), F1 - F2 * (qx * qx + qy * qy))


@njit(parallel=True, cache=True)
def project_forward(means, quats, scales, opacities, view, intrinsics, width, height):
    """means (N,3), quats (N,4) wxyz, scales (N,3) activated, opacities (N,); view (4,4) world-to-camera;
    intrinsics (fx, fy, cx, cy). Returns means2d (N,2), conics (N,3), depths (N,), radii (N,), visible (N,)."""
    n = means.shape[0]
    means2d = np.empty((n, 2), dtype=np.float32)
    conics = np.empty((n, 3), dtype=np.float32)
    depths = np.empty(n, dtype=np.float32)
    radii = np.zeros(n, dtype=np.float32)
    visible = np.zeros(n, dtype=np.bool_)
    fx, fy, cx, cy = intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3]
    lim_x = FOV_CLAMP * np.float32(width) / fx
    lim_y = FOV_CLAMP * np.float32(height) / fy
    for i in prange(n):
        mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
        px = view[0, 0] * mx + view[0, 1] * my + view[0, 2] * mz + view[0, 3]
        py = view[1, 0] * mx + view[1, 1] * my + view[1, 2] * mz + view[1, 3]
        pz = view[2, 0] * mx + view[2, 1] * my + view[2, 2] * mz + view[2, 3]
        in_front = pz > NEAR_PLANE
        z = pz if in_front else F1
        xn = px / z
        yn = py / z
        u = fx * xn + cx
        v = fy * yn + cy
        tx = min(max(xn, -lim_x), lim_x) * z
        ty = min(max(yn, -lim_y), lim_y) * z
        j00 = fx / z
        j02 = -fx * tx / (z * z)
        j11 = fy / z
        j12 = -fy * ty / (z * z)
        # T = J W (2x3)
        t00 = j00 * view[0, 0] + j02 * view[2, 0]
        t01 = j00 * view[0, 1] + j02 * view[2, 1]
        t02 = j00 * view[0, 2] + j02 * view[2, 2]
        t10 = j11 * view[1, 0] + j12 * view[2, 0]
        t11 = j11 * view[1, 1] + j12 * view[2, 1]
        t12 = j11 * view[1, 2] + j12 * view[2, 2]
        qw, qx, qy, qz = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        qn = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), QNORM_MIN)
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotation(qw / qn, qx / qn, qy / qn, qz / qn)
        s0, s1, s2 = scales[i, 0], scales[i, 1], scales[i, 2]
        # TM = T (R S): rows of the 2x3 product, then Σ2 = (TM)(TM)ᵀ
        a0 = (t00 * r00 + t01 * r10 + t02 * r20) * s0
        a1 = (t00 * r01 + t01 * r11 + t02 * r21) * s1
        a2 = (t00 * r02 + t01 * r12 + t02 * r22) * s2
        b0 = (t10 * r00 + t11 * r10 + t12 * r20) * s0
        b1 = (t10 * r01 + t11 * r11 + t12 * r21) * s1
        b2 = (t10 * r02 + t11 * r12 + t12 * r22) * s2
        ca = a0 * a0 + a1 * a1 + a2 * a2 + LOW
        cb = a0 * b0 + a1 * b1 + a2 * b2
        cc = b0 * b0 + b1 * b1 + b2 * b2 + LOW
        det = max(ca * cc - cb * cb, DET_MIN)
        means2d[i, 0] = u
        means2d[i, 1] = v
        conics[i, 0] = cc / det
        conics[i, 1] = -cb / det
        conics[i, 2] = ca / det
        depths[i] = pz
        mid = HALF * (ca + cc)
        lam = mid + math.sqrt(max(mid * mid - det, F0))
        log_term = math.log(max(opacities[i] * np.float32(255.0), LOG_MIN))
        r = math.sqrt(F2 * lam * max(log_term, F0))
        on_screen = (u + r > 0) and (u - r < width) and (v + r > 0) and (v - r < height)
        if in_front and log_term > 0 and on_screen and math.isfinite(r):
            visible[i] = True
            radii[i] = r
    return means2d, conics, depths, radii, visible


@njit(parallel=True, cache=True)
def project_backward(means, quats, scales, view, intrinsics, width, height, g_means2d, g_conics, g_depths):
    """d(means (N,3), quats (N,4), scales (N,3)) from d(means2d (N,2), conics (N,3), depths (N,))."""
    n = means.shape[0]
    d_means = np.zeros((n, 3), dtype=np.float32)
    d_quats = np.zeros((n, 4), dtype=np.float32)
    d_scales = np.zeros((n, 3), dtype=np.float32)
    fx, fy = intrinsics[0], intrinsics[1]  # the principal point shifts means2d only: no gradient here
    lim_x = FOV_CLAMP * np.float32(width) / fx
    lim_y = FOV_CLAMP * np.float32(height) / fy
    for i in prange(n):
        # ---- forward, again (cheaper than storing it) ----
        mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
        px = view[0, 0] * mx + view[0, 1] * my + view[0, 2] * mz + view[0, 3]
        py = view[1, 0] * mx + view[1, 1] * my + view[1, 2] * mz + view[1, 3]
        pz = view[2, 0] * mx + view[2, 1] * my + view[2, 2] * mz + view[2, 3]
        in_front = pz > NEAR_PLANE
        z = pz if in_front else F1
        xn = px / z
        yn = py / z
        x_free = -lim_x <= xn <= lim_x  # torch.clamp passes the gradient at the bounds too
        y_free = -lim_y <= yn <= lim_y
        cxn = min(max(xn, -lim_x), lim_x)
        cyn = min(max(yn, -lim_y), lim_y)
        tx = cxn * z
        ty = cyn * z
        z2 = z * z
        j00 = fx / z
        j02 = -fx * tx / z2
        j11 = fy / z
        j12 = -fy * ty / z2
        t00 = j00 * view[0, 0] + j02 * view[2, 0]
        t01 = j00 * view[0, 1] + j02 * view[2, 1]
        t02 = j00 * view[0, 2] + j02 * view[2, 2]
        t10 = j11 * view[1, 0] + j12 * view[2, 0]
        t11 = j11 * view[1, 1] + j12 * view[2, 1]
        t12 = j11 * view[1, 2] + j12 * view[2, 2]
        qw0, qx0, qy0, qz0 = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        qnorm = math.sqrt(qw0 * qw0 + qx0 * qx0 + qy0 * qy0 + qz0 * qz0)
        qn = max(qnorm, QNORM_MIN)
        qw, qx, qy, qz = qw0 / qn, qx0 / qn, qy0 / qn, qz0 / qn
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotation(qw, qx, qy, qz)
        s0, s1, s2 = scales[i, 0], scales[i, 1], scales[i, 2]
        # U = T R (2x3), rows a (first) and b (second) of U S
        u00 = t00 * r00 + t01 * r10 + t02 * r20
        u01 = t00 * r01 + t01 * r11 + t02 * r21
        u02 = t00 * r02 + t01 * r12 + t02 * r22
        u10 = t10 * r00 + t11 * r10 + t12 * r20
        u11 = t10 * r01 + t11 * r11 + t12 * r21
        u12 = t10 * r02 + t11 * r12 + t12 * r22
        a0, a1, a2 = u00 * s0, u01 * s1, u02 * s2
        b0, b1, b2 = u10 * s0, u11 * s1, u12 * s2
        ca = a0 * a0 + a1 * a1 + a2 * a2 + LOW
        cb = a0 * b0 + a1 * b1 + a2 * b2
        cc = b0 * b0 + b1 * b1 + b2 * b2 + LOW
        raw_det = ca * cc - cb * cb
        det = max(raw_det, DET_MIN)
        # ---- conics (c/det, -b/det, a/det) -> d(a, b, c) ----
        gA, gB, gC = g_conics[i, 0], g_conics[i, 1], g_conics[i, 2]
        inv = F1 / det
        ga = gC * inv
        gb = -gB * inv
        gc = gA * inv
        if raw_det >= DET_MIN:  # d/d det of (c, -b, a)/det, det = ac - b²
            g_det = -(gA * cc - gB * cb + gC * ca) * inv * inv
            ga += g_det * cc
            gc += g_det * ca
            gb -= g_det * F2 * cb
        # ---- Σ2 = (US)(US)ᵀ: d(rows a, b) ----
        ga0 = F2 * ga * a0 + gb * b0
        ga1 = F2 * ga * a1 + gb * b1
        ga2 = F2 * ga * a2 + gb * b2
        gb0 = F2 * gc * b0 + gb * a0
        gb1 = F2 * gc * b1 + gb * a1
        gb2 = F2 * gc * b2 + gb * a2
        # scales
        d_scales[i, 0] = ga0 * u00 + gb0 * u10
        d_scales[i, 1] = ga1 * u01 + gb1 * u11
        d_scales[i, 2] = ga2 * u02 + gb2 * u12
        # dU = d(US) S; then U = T R: dT = dU Rᵀ, dR = Tᵀ dU
        gu00, gu01, gu02 = ga0 * s0, ga1 * s1, ga2 * s2
        gu10, gu11, gu12 = gb0 * s0, gb1 * s1, gb2 * s2
        gr00 = t00 * gu00 + t10 * gu10
        gr01 = t00 * gu01 + t10 * gu11
        gr02 = t00 * gu02 + t10 * gu12
        gr10 = t01 * gu00 + t11 * gu10
        gr11 = t01 * gu01 + t11 * gu11
        gr12 = t01 * gu02 + t11 * gu12
        gr20 = t02 * gu00 + t12 * gu10
        gr21 = t02 * gu01 + t12 * gu11
        gr22 = t02 * gu02 + t12 * gu12
        gt00 = gu00 * r00 + gu01 * r01 + gu02 * r02
        gt01 = gu00 * r10 + gu01 * r11 + gu02 * r12
        gt02 = gu00 * r20 + gu01 * r21 + gu02 * r22
        gt10 = gu10 * r00 + gu11 * r01 + gu12 * r02
        gt11 = gu10 * r10 + gu11 * r11 + gu12 * r12
        gt12 = gu10 * r20 + gu11 * r21 + gu12 * r22
        # rotation -> unit quaternion -> quaternion
        gqw = F2 * (-qz * gr01 + qy * gr02 + qz * gr10 - qx * gr12 - qy * gr20 + qx * gr21)
        gqx = F2 * (qy * gr01 + qz * gr02 + qy * gr10 - F2 * qx * gr11 - qw * gr12 + qz * gr20 + qw * gr21
                    - F2 * qx * gr22)
        gqy = F2 * (-F2 * qy * gr00 + qx * gr01 + qw * gr02 + qx * gr10 + qz * gr12 - qw * gr20 + qz * gr21
                    - F2 * qy * gr22)
        gqz = F2 * (-F2 * qz * gr00 - qw * gr01 + qx * gr02 + qw * gr10 - F2 * qz * gr11 + qy * gr12 + qx * gr20
                    + qy * gr21)
        if qnorm >= QNORM_MIN:
            dot = qw * gqw + qx * gqx + qy * gqy + qz * gqz
            d_quats[i, 0] = (gqw - qw * dot) / qn
            d_quats[i, 1] = (gqx - qx * dot) / qn
            d_quats[i, 2] = (gqy - qy * dot) / qn
            d_quats[i, 3] = (gqz - qz * dot) / qn
        else:
            d_quats[i, 0] = gqw / qn
            d_quats[i, 1] = gqx / qn
            d_quats[i, 2] = gqy / qn
            d_quats[i, 3] = gqz / qn
        # T = J W: dJ = dT Wᵀ (only J's four non-zero entries matter)
        gj00 = gt00 * view[0, 0] + gt01 * view[0, 1] + gt02 * view[0, 2]
        gj02 = gt00 * view[2, 0] + gt01 * view[2, 1] + gt02 * view[2, 2]
        gj11 = gt10 * view[1, 0] + gt11 * view[1, 1] + gt12 * view[1, 2]
        gj12 = gt10 * view[2, 0] + gt11 * view[2, 1] + gt12 * view[2, 2]
        # J = (fx/z, -fx tx/z², fy/z, -fy ty/z²), tx = clamp(xn) z, xn = px/z
        g_z = -gj00 * fx / z2 - gj11 * fy / z2 + F2 * (gj02 * fx * tx + gj12 * fy * ty) / (z2 * z)
        g_tx = -gj02 * fx / z2
        g_ty = -gj12 * fy / z2
        g_z += g_tx * cxn + g_ty * cyn
        g_xn = g_means2d[i, 0] * fx + (g_tx * z if x_free else F0)
        g_yn = g_means2d[i, 1] * fy + (g_ty * z if y_free else F0)
        g_px = g_xn / z
        g_py = g_yn / z
        g_z -= (g_xn * px + g_yn * py) / z2
        g_pz = (g_z if in_front else F0) + g_depths[i]
        for k in range(3):
            d_means[i, k] = view[0, k] * g_px + view[1, k] * g_py + view[2, k] * g_pz
    return d_means, d_quats, d_scales
