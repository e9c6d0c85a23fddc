"""Gaussian model, spherical harmonics and 3DGS-layout PLY I/O."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fmsplat.gaussians import (
    SH_C0,
    SH_C1,
    GaussianModel,
    PlyFormatError,
    eval_sh,
    num_sh_coeffs,
    rgb_to_sh,
    sh_to_rgb,
)

# --------------------------------------------------------------------------------------- helpers


def random_model(n: int, degree: int, seed: int = 0, extras: bool = True) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    model = GaussianModel(
        means=torch.randn(n, 3, generator=g),
        quats=torch.randn(n, 4, generator=g),
        scales=torch.randn(n, 3, generator=g) - 3,
        opacities=torch.randn(n, generator=g),
        sh=torch.randn(n, num_sh_coeffs(degree), 3, generator=g),
        sh_degree=degree,
    )
    if extras:
        model.extras["features"] = torch.randn(n, 5, generator=g)
        model.extras["weight"] = torch.rand(n, generator=g)
        model.extras["cov"] = torch.randn(n, 2, 3, generator=g).to(torch.float16)
    return model


def write_standard_ply(path, columns: dict[str, np.ndarray]) -> None:
    """An independent writer: header text + one numpy structured array, no plyfile involved."""
    n = len(next(iter(columns.values())))
    dtype = np.dtype([(name, "<f4") for name in columns])
    records = np.empty(n, dtype)
    for name, values in columns.items():
        records[name] = values
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in columns]
    header.append("end_header")
    path.write_bytes(("\n".join(header) + "\n").encode("ascii") + records.tobytes())


def fibonacci_sphere(n: int) -> torch.Tensor:
    """Near-uniform unit directions (a quadrature for integrals over the sphere)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1)


# --------------------------------------------------------------------------------------- SH


def test_sh_degree0_is_c0_times_dc():
    sh = torch.tensor([[[1.0, -2.0, 0.5]]])
    dirs = torch.tensor([[0.6, 0.0, 0.8]])
    out = eval_sh(0, sh, dirs)
    assert torch.allclose(out, torch.tensor([[0.28209479177387814, -0.5641895835477563, 0.14104739588693907]]))


def test_sh_degree1_matches_3dgs_formula():
    g = torch.Generator().manual_seed(1)
    sh = torch.randn(50, 4, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=1)
    x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
    expected = SH_C0 * sh[:, 0] - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    assert torch.allclose(eval_sh(1, sh, dirs), expected, atol=1e-12)
    # A hand-computed value: looking along +y, only the DC and the -C1*y*sh[1] terms survive.
    one = torch.zeros(1, 4, 3, dtype=torch.float64)
    one[0, 0, 0], one[0, 1, 0] = 1.0, 2.0
    value = eval_sh(1, one, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))[0, 0]
    assert value.item() == pytest.approx(0.28209479177387814 - 2 * 0.4886025119029199)


def test_sh_basis_up_to_degree3_is_orthonormal():
    # With one-hot coefficients eval_sh returns single basis functions; a real SH basis with the
    # right constants integrates to the identity over the sphere. A wrong constant or sign of
    # any degree-2/3 term breaks this.
    dirs = fibonacci_sphere(10000)
    k = num_sh_coeffs(3)
    # Channel j of an identity coefficient block is basis function j.
    basis = eval_sh(3, torch.eye(k, dtype=torch.float64).expand(len(dirs), k, k), dirs)
    gram = 4 * math.pi * basis.T @ basis / len(dirs)
    assert torch.allclose(gram, torch.eye(k, dtype=torch.float64), atol=2e-3)


def test_sh_degree2_and_3_along_z_hand_values():
    k = num_sh_coeffs(3)
    sh = torch.zeros(1, k, 1, dtype=torch.float64)
    sh[0, 6, 0] = 1.0  # C2[2] * (2zz - xx - yy) -> 2 * 0.31539156525252005 at z = 1
    sh[0, 12, 0] = 1.0  # C3[3] * z * (2zz - 3xx - 3yy) -> 2 * 0.3731763325901154 at z = 1
    z_axis = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    assert eval_sh(2, sh, z_axis).item() == pytest.approx(2 * 0.31539156525252005)
    assert eval_sh(3, sh, z_axis).item() == pytest.approx(2 * 0.31539156525252005 + 2 * 0.3731763325901154)


def test_sh_gradients_flow_only_to_used_coefficients():
    sh = torch.randn(10, 16, 3, requires_grad=True)
    dirs = torch.nn.functional.normalize(torch.randn(10, 3), dim=1).requires_grad_(True)
    eval_sh(2, sh, dirs).sum().backward()
    assert (sh.grad[:, :9].abs().sum(dim=(0, 2)) > 0).all()
    assert (sh.grad[:, 9:] == 0).all()
    assert dirs.grad is not None and dirs.grad.abs().sum() > 0


def test_sh_rejects_bad_degree_and_short_coefficients():
    with pytest.raises(ValueError, match="degree"):
        eval_sh(4, torch.zeros(1, 25, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="needs 9"):
        eval_sh(2, torch.zeros(1, 4, 3), torch.zeros(1, 3))


def test_rgb_sh_conversion_uses_3dgs_c0():
    rgb = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(rgb_to_sh(rgb), (rgb - 0.5) / 0.28209479177387814)
    assert torch.allclose(sh_to_rgb(rgb_to_sh(rgb)), rgb)
    assert sh_to_rgb(np.float64(1.0)) == pytest.approx(0.78209479177387814)


# --------------------------------------------------------------------------------------- model


def test_from_points_scales_rotations_opacity_and_colour():
    # A 5x5x5 grid with spacing 0.5: every point's 3 nearest neighbours are 0.5 away.
    axis = np.arange(5) * 0.5
    xyz = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    rgb = np.random.default_rng(0).random(xyz.shape)
    model = GaussianModel.from_points(xyz, rgb, sh_degree=2, init_opacity=0.1)
    assert len(model) == 125 and model.sh.shape == (125, 9, 3)
    means, quats, scales, opacities = model.activated()
    assert torch.allclose(scales, torch.full_like(scales, 0.5), atol=1e-6)
    assert torch.equal(quats, torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(125, 4))
    assert torch.allclose(opacities, torch.full_like(opacities, 0.1))
    assert torch.allclose(model.colors([10.0, 0.0, 0.0]), torch.from_numpy(rgb).float(), atol=1e-6)
    assert (model.sh[:, 1:] == 0).all()


def test_from_points_clamps_duplicate_points_and_rejects_bad_input():
    xyz = np.zeros((4, 3))
    model = GaussianModel.from_points(xyz, np.full((4, 3), 0.5), min_scale=1e-4)
    assert torch.isfinite(model.scales).all()
    assert torch.allclose(model.scales, torch.full_like(model.scales, math.log(1e-4)))
    with pytest.raises(ValueError, match="at least 2"):
        GaussianModel.from_points(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        GaussianModel.from_points(np.array([[0, 0, np.nan], [1, 1, 1]]), np.zeros((2, 3)))


def test_random_init_is_inside_the_box_and_seeded():
    a = GaussianModel.random(500, lo=[-1, 0, 2], hi=[1, 3, 4], sh_degree=1, seed=3)
    b = GaussianModel.random(500, lo=[-1, 0, 2], hi=[1, 3, 4], sh_degree=1, seed=3)
    c = GaussianModel.random(500, lo=[-1, 0, 2], hi=[1, 3, 4], sh_degree=1, seed=4)
    assert len(a) == 500 and a.sh_degree == 1
    assert (a.means >= torch.tensor([-1.0, 0.0, 2.0])).all() and (a.means <= torch.tensor([1.0, 3.0, 4.0])).all()
    assert torch.equal(a.means, b.means) and not torch.equal(a.means, c.means)
    colors = a.colors([0.0, 0.0, 0.0])
    assert colors.min() >= 0 and colors.max() <= 1 and colors.std() > 0.1


def test_colors_are_view_dependent_and_clamped():
    model = random_model(20, degree=1, extras=False)
    cam = torch.tensor([3.0, -2.0, 1.0])
    dirs = torch.nn.functional.normalize(model.means - cam, dim=1)
    x, y, z = dirs[:, 0:1], dirs[:, 1:2], dirs[:, 2:3]
    sh = model.sh
    raw = SH_C0 * sh[:, 0] - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3] + 0.5
    assert torch.allclose(model.colors(cam), raw.clamp_min(0), atol=1e-6)
    assert (raw < 0).any()  # the clamp was exercised
    assert torch.allclose(model.colors(cam, degree=0), (SH_C0 * sh[:, 0] + 0.5).clamp_min(0))
    with pytest.raises(ValueError, match="exceeds"):
        model.colors(cam, degree=2)


def test_activated_normalises_quats_and_activates():
    model = random_model(30, degree=0, extras=False)
    means, quats, scales, opacities = model.activated()
    assert torch.allclose(quats.norm(dim=1), torch.ones(30))
    assert torch.allclose(scales, model.scales.exp()) and torch.allclose(opacities, torch.sigmoid(model.opacities))
    assert means is model.means


def test_subset_by_mask_and_index_keeps_extras():
    model = random_model(10, degree=1)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    by_mask = model.subset(mask)
    by_index = model.subset(np.array([1, 4, 7]))
    for sub in (by_mask, by_index):
        assert len(sub) == 3
        assert torch.equal(sub.means, model.means[[1, 4, 7]])
        assert torch.equal(sub.sh, model.sh[[1, 4, 7]])
        assert torch.equal(sub.extras["cov"], model.extras["cov"][[1, 4, 7]])
    with pytest.raises(ValueError, match="mask"):
        model.subset(torch.ones(3, dtype=torch.bool))


def test_constructor_validates_shapes():
    model = random_model(4, degree=1, extras=False)
    with pytest.raises(ValueError, match="sh has shape|GaussianModel.sh"):
        GaussianModel(model.means, model.quats, model.scales, model.opacities, torch.zeros(4, 9, 3), sh_degree=1)
    with pytest.raises(ValueError, match="extra tensor 'f'"):
        GaussianModel(model.means, model.quats, model.scales, model.opacities, model.sh, 1, extras={"f": torch.zeros(3, 2)})


def test_tensors_round_trip_through_safetensors(tmp_path):
    model = random_model(40, degree=3)
    save_file({k: v.contiguous() for k, v in model.tensors().items()}, str(tmp_path / "g.safetensors"))
    back = GaussianModel.from_tensors(load_file(str(tmp_path / "g.safetensors")), sh_degree=3)
    for name, tensor in model.tensors().items():
        assert torch.equal(back.tensors()[name], tensor), name
    assert GaussianModel.from_tensors(model.tensors()).sh_degree == 3  # inferred from sh
    with pytest.raises(KeyError, match="means"):
        GaussianModel.from_tensors({"quats": model.quats}, sh_degree=3)


# --------------------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip_all_tensors_and_extras(tmp_path, degree):
    model = random_model(64, degree, seed=degree)
    path = tmp_path / "g.ply"
    model.save_ply(path)
    back = GaussianModel.load_ply(path)
    assert back.sh_degree == degree and len(back) == 64
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.equal(getattr(back, name), getattr(model, name)), name
    assert set(back.extras) == {"features", "weight", "cov"}
    for name, tensor in model.extras.items():
        assert back.extras[name].dtype == tensor.dtype and back.extras[name].shape == tensor.shape
        assert torch.equal(back.extras[name], tensor), name
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


def test_ply_header_has_the_3dgs_layout(tmp_path):
    model = random_model(3, degree=1)
    model.save_ply(tmp_path / "g.ply")
    data = (tmp_path / "g.ply").read_bytes()
    header = data[: data.index(b"end_header\n")].decode("ascii").splitlines()
    assert header[1] == "format binary_little_endian 1.0"
    props = [line.split() for line in header if line.startswith("property")]
    assert all(p[1] == "float" for p in props)
    names = [p[2] for p in props]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2"]
    expected += ["rot_0", "rot_1", "rot_2", "rot_3"]
    assert names[: len(expected)] == expected
    assert names[len(expected) :] == [f"extra_features_{i}" for i in range(5)] + ["extra_weight_0"] + [f"extra_cov_{i}" for i in range(6)]
    # f_rest is channel-major: f_rest_0..2 are the 3 degree-1 coefficients of red.
    body = np.frombuffer(data[data.index(b"end_header\n") + 11 :], dtype="<f4").reshape(3, len(names))
    rest = body[:, 9:18]
    assert np.array_equal(rest[:, 0:3], model.sh[:, 1:, 0].numpy())
    assert np.array_equal(rest[:, 3:6], model.sh[:, 1:, 1].numpy())


def test_ply_from_an_independent_standard_writer_loads(tmp_path):
    rng = np.random.default_rng(7)
    n, rest = 12, 24  # degree 2: 8 higher coefficients x 3 channels
    columns = {name: rng.normal(size=n).astype(np.float32) for name in ["x", "y", "z", "nx", "ny", "nz"]}
    columns.update({f"f_dc_{i}": rng.normal(size=n).astype(np.float32) for i in range(3)})
    columns.update({f"f_rest_{i}": rng.normal(size=n).astype(np.float32) for i in range(rest)})
    columns["opacity"] = rng.normal(size=n).astype(np.float32)
    columns.update({f"scale_{i}": rng.normal(size=n).astype(np.float32) for i in range(3)})
    columns.update({f"rot_{i}": rng.normal(size=n).astype(np.float32) for i in range(4)})
    columns["filter_3D"] = rng.random(n).astype(np.float32)  # a property other trainers add
    path = tmp_path / "standard.ply"
    write_standard_ply(path, columns)

    model = GaussianModel.load_ply(path)
    assert model.sh_degree == 2 and len(model) == n and model.extras == {}
    assert np.array_equal(model.means.numpy(), np.stack([columns["x"], columns["y"], columns["z"]], 1))
    assert np.array_equal(model.opacities.numpy(), columns["opacity"])
    assert np.array_equal(model.quats[:, 3].numpy(), columns["rot_3"])
    assert np.array_equal(model.scales[:, 1].numpy(), columns["scale_1"])
    assert np.array_equal(model.sh[:, 0, 2].numpy(), columns["f_dc_2"])
    # Coefficient k (1..8) of channel c is f_rest_{c * 8 + k - 1}.
    assert np.array_equal(model.sh[:, 3, 1].numpy(), columns["f_rest_10"])
    assert np.array_equal(model.sh[:, 8, 2].numpy(), columns["f_rest_23"])
    assert np.array_equal(model.sh[:, 1, 0].numpy(), columns["f_rest_0"])


def test_ply_without_normals_loads_and_missing_property_is_named(tmp_path):
    n = 5
    base = {name: np.ones(n, np.float32) for name in ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]}
    base.update({f"scale_{i}": np.zeros(n, np.float32) for i in range(3)})
    base.update({f"rot_{i}": np.ones(n, np.float32) for i in range(4)})
    write_standard_ply(tmp_path / "ok.ply", base)
    model = GaussianModel.load_ply(tmp_path / "ok.ply")
    assert model.sh_degree == 0 and len(model) == n

    broken = dict(base)
    del broken["rot_2"]
    write_standard_ply(tmp_path / "broken.ply", broken)
    with pytest.raises(PlyFormatError, match=r"broken\.ply.*rot_2"):
        GaussianModel.load_ply(tmp_path / "broken.ply")

    odd = dict(base)
    odd.update({f"f_rest_{i}": np.zeros(n, np.float32) for i in range(10)})
    write_standard_ply(tmp_path / "odd.ply", odd)
    with pytest.raises(PlyFormatError, match=r"odd\.ply.*10 f_rest"):
        GaussianModel.load_ply(tmp_path / "odd.ply")

    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(PlyFormatError, match=r"junk\.ply"):
        GaussianModel.load_ply(tmp_path / "junk.ply")


def test_ply_integer_and_bool_extras_round_trip(tmp_path):
    model = random_model(4, degree=0, extras=False)
    model.extras["instance"] = torch.tensor([0, 7, 2**24, -3], dtype=torch.int64)
    model.extras["selected"] = torch.tensor([[True, False], [False, False], [True, True], [False, True]])
    model.save_ply(tmp_path / "g.ply")
    back = GaussianModel.load_ply(tmp_path / "g.ply")
    assert back.extras["instance"].dtype == torch.int64 and torch.equal(back.extras["instance"], model.extras["instance"])
    assert back.extras["selected"].dtype == torch.bool and torch.equal(back.extras["selected"], model.extras["selected"])
    model.extras["instance"][0] = 2**24 + 1  # not representable in float32
    with pytest.raises(ValueError, match="instance.*2\\^24"):
        model.save_ply(tmp_path / "h.ply")


def test_ply_rejects_unstorable_extra_names(tmp_path):
    model = random_model(3, degree=0, extras=False)
    model.extras["bad name"] = torch.zeros(3)
    with pytest.raises(ValueError, match="bad name"):
        model.save_ply(tmp_path / "g.ply")
    assert not (tmp_path / "g.ply").exists()
