"""The numba rasterizer against the plain PyTorch reference, and the reference against
finite differences and closed-form values."""

from __future__ import annotations

import math

import pytest
import torch

from fmsplat.render import rasterize
from fmsplat.render.projection import LOW_PASS, quat_to_rotmat


def random_scene(seed: int, n: int, channels: int, width: int = 53, height: int = 41, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([0.7, 0.5, 0.6], dtype=dtype)
    means = means + torch.tensor([0.0, 0.0, 3.0], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.2 + 0.01
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, channels, generator=g, dtype=dtype) * 2 - 0.5
    K = torch.tensor([[55.0, 0, width / 2 + 0.3], [0, 57.0, height / 2 - 0.2], [0, 0, 1]], dtype=dtype)
    # A camera that is not the identity, so the rotation part of the projection is exercised.
    angle = 0.2
    R = torch.tensor(
        [[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]], dtype=dtype
    )
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.1, -0.05, 0.2], dtype=dtype)
    return [means, quats, scales, opacities, colors], viewmat, K, width, height


def render_both(params, viewmat, K, width, height, background=None):
    outs = {}
    for backend in ("numba", "torch"):
        leaves = [p.clone().requires_grad_(True) for p in params]
        res = rasterize(*leaves, viewmat, K, width, height, background=background, backend=backend)
        outs[backend] = (leaves, res)
    return outs


@pytest.mark.parametrize("seed,channels", [(0, 1), (1, 3), (2, 35), (3, 160)])
def test_forward_matches_reference(seed, channels):
    params, viewmat, K, w, h = random_scene(seed, 250, channels)
    bg = torch.linspace(0.1, 0.9, channels, dtype=torch.float64)
    outs = render_both(params, viewmat, K, w, h, background=bg)
    fast, ref = outs["numba"][1], outs["torch"][1]
    assert fast.image.shape == (h, w, channels)
    assert ref.alpha.max() > 0.5, "the scene must actually cover pixels"
    assert (fast.image - ref.image).abs().max() <= 1e-4
    assert (fast.alpha - ref.alpha).abs().max() <= 1e-4
    assert (fast.depth - ref.depth).abs().max() <= 1e-4 * ref.depth.abs().max().clamp_min(1)
    assert torch.equal(fast.radii, ref.radii)


@pytest.mark.parametrize("seed,channels", [(10, 3), (11, 35), (12, 160)])
def test_gradients_match_reference(seed, channels):
    params, viewmat, K, w, h = random_scene(seed, 200, channels)
    outs = render_both(params, viewmat, K, w, h, background=torch.full((channels,), 0.25, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed + 100)
    w_img = torch.randn(h, w, channels, generator=g, dtype=torch.float64)
    w_alpha = torch.randn(h, w, generator=g, dtype=torch.float64)
    w_depth = torch.randn(h, w, generator=g, dtype=torch.float64)
    for leaves, res in outs.values():
        loss = (res.image * w_img).sum() + (res.alpha * w_alpha).sum() + (res.depth * w_depth).sum()
        loss.backward()
    names = ["means", "quats", "scales", "opacities", "colors"]
    for name, fast, ref in zip(names, outs["numba"][0], outs["torch"][0]):
        scale = ref.grad.abs().max()
        assert scale > 0, name
        err = (fast.grad - ref.grad).abs().max() / scale
        assert err < 2e-4, f"{name}: relative gradient error {err:.2e}"
    m_fast, m_ref = outs["numba"][1].means2d.grad, outs["torch"][1].means2d.grad
    assert (m_fast - m_ref).abs().max() / m_ref.abs().max() < 2e-4


def test_reference_gradients_against_finite_differences():
    params, viewmat, K, w, h = random_scene(5, 6, 2, width=12, height=10)
    params[2] = params[2] + 0.15  # larger blobs so every Gaussian reaches several pixels
    leaves = [p.clone().requires_grad_(True) for p in params]

    def f(means, quats, scales, opacities, colors):
        res = rasterize(means, quats, scales, opacities, colors, viewmat, K, w, h, backend="torch")
        return res.image, res.alpha, res.depth

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_single_gaussian_closed_form():
    """An isotropic Gaussian facing the camera: peak = opacity·colour, profile = EWA footprint."""
    width, height, f, z, s, o = 64, 64, 80.0, 4.0, 0.1, 0.8
    K = torch.tensor([[f, 0, 32.0], [0, f, 32.0], [0, 0, 1]])
    res = rasterize(
        torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s),
        torch.tensor([o]), torch.tensor([[0.5, 1.0, 2.0]]), torch.eye(4), K, width, height,
    )
    var = (s * f / z) ** 2 + LOW_PASS
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    expected_alpha = o * torch.exp(-((xs - 32) ** 2 + (ys - 32) ** 2) / (2 * var))
    expected_alpha = torch.where(expected_alpha >= 1 / 255, expected_alpha, torch.zeros(()))
    assert torch.allclose(res.alpha, expected_alpha, atol=1e-5)
    assert torch.allclose(res.image[..., 2], 2.0 * expected_alpha, atol=1e-5)
    assert torch.allclose(res.depth, z * expected_alpha, atol=1e-4)
    assert torch.allclose(res.means2d, torch.tensor([[32.0, 32.0]]))


def test_opaque_wall_gives_its_depth_and_stops_compositing():
    """A dense wall of opaque Gaussians hides a red one behind it completely."""
    xs = torch.linspace(-2, 2, 41)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    wall = torch.cat([grid, torch.full((grid.shape[0], 1), 2.0)], 1)
    means = torch.cat([wall, torch.tensor([[0.0, 0.0, 3.0]])])
    n = means.shape[0]
    scales = torch.full((n, 3), 0.08)
    opac = torch.full((n,), 0.99)
    colors = torch.zeros(n, 3)
    colors[:-1, 1] = 1.0
    colors[-1, 0] = 1.0
    K = torch.tensor([[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]])
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)
    res = rasterize(means, quats, scales, opac, colors, torch.eye(4), K, 32, 32)
    assert res.alpha.min() > 0.999
    assert res.image[..., 0].abs().max() < 1e-3  # the red Gaussian is never seen
    assert torch.allclose(res.expected_depth(), torch.full((32, 32), 2.0), atol=2e-3)


def test_empty_and_culled_inputs():
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    bg = torch.tensor([0.2, 0.4, 0.6])
    empty = rasterize(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0),
                      torch.zeros(0, 3), torch.eye(4), K, 32, 24, background=bg)
    assert empty.image.shape == (24, 32, 3) and torch.allclose(empty.image, bg.expand(24, 32, 3))
    assert empty.alpha.abs().max() == 0
    behind = torch.tensor([[0.0, 0.0, -2.0], [0.1, 0.0, 0.005]], requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    res = rasterize(behind, quats, torch.full((2, 3), 0.5), torch.full((2,), 0.9), torch.ones(2, 3),
                    torch.eye(4), K, 32, 24, background=bg)
    assert torch.allclose(res.image, bg.expand(24, 32, 3)) and (res.radii == 0).all()
    res.image.sum().backward()
    assert torch.isfinite(behind.grad).all() and behind.grad.abs().max() == 0


def test_huge_and_degenerate_gaussians_match_reference():
    params, viewmat, K, w, h = random_scene(21, 40, 3)
    params[2][:5] = 50.0  # far larger than the image, some containing the camera's view
    params[2][5:10] = 1e-9  # degenerate: a point, drawn as the 0.3 px low-pass blob
    params[2][10:15, 0] = 0.0  # flat discs
    outs = render_both(params, viewmat, K, w, h)
    fast, ref = outs["numba"][1], outs["torch"][1]
    assert torch.isfinite(fast.image).all()
    assert (fast.image - ref.image).abs().max() <= 1e-4


def test_nan_and_bad_shapes_give_clear_errors():
    params, viewmat, K, w, h = random_scene(0, 10, 3)
    bad = [p.clone() for p in params]
    bad[0][3, 1] = float("nan")
    with pytest.raises(ValueError, match="means contains 1 non-finite"):
        rasterize(*bad, viewmat, K, w, h)
    with pytest.raises(ValueError, match="opacities must have shape"):
        rasterize(params[0], params[1], params[2], params[3][:5], params[4], viewmat, K, w, h)
    with pytest.raises(ValueError, match="scales must be activated"):
        rasterize(params[0], params[1], -params[2], params[3], params[4], viewmat, K, w, h)


def test_quat_to_rotmat_is_a_rotation():
    q = torch.randn(100, 4, dtype=torch.float64) * 3
    R = quat_to_rotmat(q)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(100, dtype=torch.float64))
    # 90° about z maps x to y.
    Rz = quat_to_rotmat(torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]], dtype=torch.float64))
    assert torch.allclose(Rz[0] @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64))


@pytest.mark.parametrize("seed,channels", [(20, 1), (21, 33)])
def test_accumulate_is_the_adjoint_of_rendering(seed, channels):
    """<render(x), s> = <x, accumulate(s)> for any per-Gaussian x and image signal s; the numba kernel
    against the torch reference, and the weights against a one-hot render of every Gaussian."""
    from fmsplat.render import accumulate

    params, viewmat, K, w, h = random_scene(seed, 60, channels)
    means, quats, scales, opacities, colors = params
    signal = torch.rand(h, w, channels, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.3
    sums, weights = accumulate(means, quats, scales, opacities, signal, viewmat, K, backend="numba")
    ref_sums, ref_weights = accumulate(means, quats, scales, opacities, signal, viewmat, K, backend="torch")
    assert weights.sum() > 10, "the Gaussians must cover pixels"
    assert torch.allclose(sums, ref_sums, atol=2e-4) and torch.allclose(weights, ref_weights, atol=2e-4)
    image = rasterize(means, quats, scales, opacities, colors, viewmat, K, w, h, backend="torch").image
    assert float((image * signal).sum()) == pytest.approx(float((colors * sums).sum()), rel=1e-4, abs=1e-3)
    # one-hot channels render each Gaussian's weight map; their pixel sums are the weights
    onehot = rasterize(means, quats, scales, opacities, torch.eye(60, dtype=torch.float64), viewmat, K, w, h,
                       backend="torch").image
    assert torch.allclose(onehot.sum((0, 1)), weights, atol=2e-4)
    assert torch.allclose(torch.einsum("hwg,hwc->gc", onehot, signal), sums, atol=2e-4)


def test_numba_projection_and_its_backward_match_torch_autograd():
    """The fused projection kernels (render.projection_kernels) in float32 against torch's autograd of
    projection.project_gaussians in float64, with Gaussians behind the camera, far outside the view
    (the clamped Jacobian), flat and point-like scales and unnormalised quaternions among them."""
    from fmsplat.render import _project_numba
    from fmsplat.render.projection import project_gaussians

    params, viewmat, K, w, h = random_scene(30, 400, 1)
    means, quats, scales, opacities, _ = params
    means[:20, 2] = -1.0  # behind the camera
    means[20:40, 0] = 6.0  # far right of the view: the Jacobian is clamped there
    scales[40:50] = 1e-9
    scales[50:60, 1] = 0.0
    quats[60:70] *= 40.0
    g = torch.Generator().manual_seed(31)
    weights = [torch.randn(400, 2, generator=g, dtype=torch.float64), torch.randn(400, 3, generator=g, dtype=torch.float64),
               torch.randn(400, generator=g, dtype=torch.float64)]
    results = {}
    for name, fn, dtype in (("numba", _project_numba, torch.float32), ("torch", project_gaussians, torch.float64)):
        leaves = [t.clone().to(dtype).requires_grad_(True) for t in (means, quats, scales)]
        proj = fn(*leaves, opacities.to(dtype), viewmat.to(dtype), K.to(dtype), w, h)
        outputs = (proj.means2d, proj.conics, proj.depths)
        sum(((o.double() * wt).sum() for o, wt in zip(outputs, weights))).backward()
        results[name] = (proj, [t.grad.double() for t in leaves])
    fast, ref = results["numba"][0], results["torch"][0]
    assert torch.equal(fast.visible, ref.visible) and 0 < int(ref.visible.sum()) < 400
    for a, b, what in ((fast.means2d, ref.means2d, "means2d"), (fast.conics, ref.conics, "conics"),
                       (fast.depths, ref.depths, "depths"), (fast.radii, ref.radii, "radii")):
        err = ((a.double() - b).abs() / (b.abs() + 1)).max()
        assert err < 1e-4, f"{what}: relative error {err:.2e}"
    for name, a, b in zip(("means", "quats", "scales"), results["numba"][1], results["torch"][1]):
        assert b.abs().max() > 0, name
        err = ((a - b).abs() / (b.abs() + b.abs().max() * 1e-3)).max()
        assert err < 1e-3, f"d{name}: relative error {err:.2e}"


def test_radix_depth_sort_is_torchs_stable_argsort():
    """The binning's depth order: ties in index order, negatives, -0.0 with 0.0, a wide range."""
    import numpy as np

    from fmsplat.render.numba_kernels import argsort_stable

    rng = np.random.default_rng(0)
    keys = (rng.random(5000) * 10.0 - 1.0).astype(np.float32)
    keys[::7] = keys[3]  # ties
    keys[10:20] = np.float32(-0.0)
    keys[20:30] = np.float32(0.0)
    keys[30:40] = np.float32(rng.choice([1e-30, 1e30, -1e30, 3.4e38], 10))
    assert np.array_equal(argsort_stable(keys), torch.argsort(torch.from_numpy(keys), stable=True).numpy())
    assert argsort_stable(np.zeros(0, np.float32)).shape == (0,)
