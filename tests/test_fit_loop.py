"""The shared fit loop (fields.loop) and typed settings (fields.configs): every method, and the 3DGS
trainer, continues an interrupted run to the uninterrupted result; a checkpoint of another run is
refused by name; malformed --opt values are one-line errors naming the field; the CLI picks the
preset for the device and says which."""

from __future__ import annotations

import shutil

import numba
import pytest
import torch

from fmsplat.fields import ConfigError, FieldError, fit_field
from fmsplat.fields.configs import PRESETS, make_config, parse_opts

# tiny, fast settings per method (a few steps at small render sizes on the tiny scene)
FAST = {
    "distill": dict(models=["effnet-mid"], render_scale=0.5),
    "fmgs": dict(models=["effnet@input_scale=4", "effnet-mid@stride=8"], pyramid=False, render_scale=0.25,
                 optimizer="adam", grids=((4, 4, 32),), log2_table=12, hidden=32, language_layers=2, warm_steps=3),
    "m3": dict(models=["effnet"], n_points=64, render_scale=0.25, lr_queries=0.05, bank_method="fast", warm_start=True,
               warm_steps=3),
}
STEPS, EVERY, CUT = 6, 2, 5  # interrupted during step 5 (backward call 5), after the checkpoint of step 4
# backward calls of each method's warm start before its first step (its pre-fit steps; one space for m3)
WARM_BACKWARDS = {"distill": 0, "fmgs": 3, "m3": 3}


def _fit(scene, method, **kw):
    return fit_field(scene, method, progress=False, steps=STEPS, checkpoint_every=EVERY, **{**FAST[method], **kw})


def _result(method, field_) -> dict[str, torch.Tensor]:
    if method == "fmgs":
        return {"table": field_.grid.table.detach().clone(),
                **{k: v.detach().clone() for k, v in field_.heads.state_dict().items()}}
    return {k: v.detach().clone() for k, v in field_.state_dict().items()}


class Interrupted(Exception):
    pass


def _interrupt_at(monkeypatch, n: int):
    """Make the n-th backward pass from now raise Interrupted (a run killed mid-step)."""
    real = torch.Tensor.backward
    calls = {"n": 0}

    def backward(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupted
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    return lambda: monkeypatch.setattr(torch.Tensor, "backward", real)


@pytest.fixture
def one_numba_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)  # gradient buffers summed in one order: repeatable runs
    yield
    numba.set_num_threads(before)


@pytest.mark.parametrize("method", ["distill", "fmgs", "m3", "3dgs"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(method, tiny_scene, tiny_dataset, tmp_path, monkeypatch,
                                                             one_numba_thread):
    if method == "3dgs":
        from fmsplat.gaussians import GaussianModel
        from fmsplat.reconstruct import TrainConfig, train_gaussians

        cfg = TrainConfig(steps=STEPS, checkpoint_every=EVERY, max_gaussians=2000, sh_degree=0, strategy="3dgs")
        train_gaussians(tiny_dataset, tmp_path / "full", cfg, progress=False)
        restore = _interrupt_at(monkeypatch, CUT)
        with pytest.raises(Interrupted):
            train_gaussians(tiny_dataset, tmp_path / "cut", cfg, progress=False)
        restore()
        metrics = train_gaussians(tiny_dataset, tmp_path / "cut", cfg, resume=True, progress=False)
        assert metrics["resumed_from_step"] == 4
        a, b = (GaussianModel.load_ply(tmp_path / d / "gaussians.ply") for d in ("full", "cut"))
        torch.testing.assert_close(b.means, a.means, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.sh, a.sh, atol=1e-5, rtol=1e-4)
        return

    scenes = {}
    for name in ("full", "cut"):
        scenes[name] = tmp_path / name
        shutil.copytree(tiny_scene, scenes[name], ignore=shutil.ignore_patterns("fields", "memory"))
    full = _result(method, _fit(scenes["full"], method))

    restore = _interrupt_at(monkeypatch, CUT + WARM_BACKWARDS[method])
    with pytest.raises(Interrupted):
        _fit(scenes["cut"], method)
    restore()
    ckpt = scenes["cut"] / "fields" / method / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    assert not (scenes["cut"] / "fields" / method / "field.json").exists()

    # another config is refused, naming the setting
    other = {"distill": dict(lr_features=0.5), "fmgs": dict(lam=0.5), "m3": dict(feature_weight=0.9)}[method]
    with pytest.raises(FieldError, match=f"cannot resume.*config {next(iter(other))}"):
        _fit(scenes["cut"], method, resume=True, **other)
    # ... so is another scene (same size, other geometry)
    moved = tmp_path / "moved"
    shutil.copytree(scenes["cut"], moved)
    from fmsplat.gaussians import GaussianModel

    g = GaussianModel.load_ply(moved / "gaussians.ply")
    with torch.no_grad():
        g.means += 0.01
    g.save_ply(moved / "gaussians.ply")
    from fmsplat.errors import SceneError

    with pytest.raises(SceneError, match="not the Gaussians this scene was trained to"):  # refused on open
        _fit(moved, method, resume=True)

    resumed = _fit(scenes["cut"], method, resume=True)
    assert resumed.summary["resumed_from_step"] == 4 and resumed.summary["steps"] == STEPS
    assert not ckpt.exists()
    got = _result(method, resumed)
    assert got.keys() == full.keys()
    for k in full:
        torch.testing.assert_close(got[k], full[k], atol=1e-5, rtol=1e-4, msg=k)


def test_an_unreadable_checkpoint_is_a_clear_error(copy_scene):
    ckpt = copy_scene / "fields" / "distill" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(FieldError, match="cannot read the checkpoint.*delete it"):
        _fit(copy_scene, "distill", resume=True)


@pytest.mark.parametrize("method, pair, message", [
    ("m3", "joint=no", r"--opt joint \(bool\): must be true or false, got 'no'"),
    ("distill", "steps=many", r"--opt steps \(int\): must be an integer, got 'many'"),
    ("fmgs", "lam=big", r"--opt lam \(float\): must be a finite number"),
    ("fmgs", "optimizer=sgd", r"--opt optimizer \(radam\|adam\): must be one of 'radam', 'adam', got 'sgd'"),
    ("fmgs", "grids=12:16", r"--opt grids .*3-tuples"),
    ("m3", "taus=effnet:0.8", r"--opt taus .*entry 'effnet:0.8' is not MODEL=float"),
    ("m3", "nosuch=1", r"--opt nosuch: m3 has no such setting; known: steps, "),
    ("distill", "render_scale", r"--opt 'render_scale' is not KEY=VALUE"),
])
def test_malformed_opts_are_named_errors(method, pair, message):
    with pytest.raises(ConfigError, match=message):
        parse_opts(method, [pair])


@pytest.mark.parametrize("method, pair, message", [
    ("distill", "render_scale=-1", r"distill config: render_scale must lie in \(0, 4\], got -1.0"),
    ("fmgs", "lam=1.5", r"fmgs config: lam must lie in \[0, 1\], got 1.5"),
    ("m3", "taus=effnet=1.5", r"m3 config: taus must lie in \(0, 1\], got 1.5"),
    ("m3", "steps=-3", r"m3 config: steps must lie in \[0, inf\), got -3"),
])
def test_out_of_range_values_are_named_errors(method, pair, message):
    with pytest.raises(ConfigError, match=message):
        make_config(method, "cpu", parse_opts(method, [pair]))


def test_opts_are_read_by_declared_type():
    assert parse_opts("m3", ["joint=true", "taus=effnet=0.7,clip=0.9", "steps=12", "render_scale=1"]) == \
        {"joint": True, "taus": {"effnet": 0.7, "clip": 0.9}, "steps": 12, "render_scale": 1.0}
    cfg = make_config("fmgs", "paper", parse_opts("fmgs", ["grids=2:4:8,3:8:16", "optimizer=adam"]))
    assert cfg.grids == ((2, 4, 8), (3, 8, 16)) and cfg.optimizer == "adam"
    # a config survives its JSON form (saved in field.json) unchanged
    import json

    for method in PRESETS["cpu"]:
        c = make_config(method, "cpu")
        assert type(c)(**json.loads(json.dumps(c.to_json()))) == c
    with pytest.raises(ConfigError, match="unknown preset 'gpu'; choose from paper, cpu"):
        make_config("m3", "gpu")


def test_fit_command_on_a_cpu_picks_the_cpu_preset_and_says_so(copy_scene, monkeypatch):
    """No --preset on a machine without CUDA: the cpu preset, printed; bad --opt values fail before
    anything is read."""
    from typer.testing import CliRunner

    import fmsplat.fields as fields
    from fmsplat.apps.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = {}

    class Done(Exception):
        pass

    def fake_fit(scene, method, config=None, **kw):
        seen.update(method=method, config=config)
        raise Done

    monkeypatch.setattr(fields, "fit_field", fake_fit)
    out = CliRunner().invoke(app, ["fit", str(copy_scene), "--method", "fmgs", "--steps", "9"])
    assert isinstance(out.exception, Done), out.output
    assert "fmgs with the cpu preset (no CUDA device" in out.output
    cfg = seen["config"]
    assert (cfg.steps, cfg.pyramid_tile_input, cfg.render_scale, cfg.optimizer) == (9, 96, 0.25, "adam")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = CliRunner().invoke(app, ["fit", str(copy_scene), "--method", "fmgs"])
    assert "fmgs with the paper preset (a CUDA device is present" in out.output
    assert seen["config"] == make_config("fmgs", "paper")

    out = CliRunner().invoke(app, ["fit", str(copy_scene), "--method", "m3", "--opt", "joint=no"])
    assert out.exit_code == 1 and "joint (bool): must be true or false, got 'no'" in out.output
    assert "Traceback" not in out.output

    # without --method: the default of fields.configs (lifting), the same one the demo fits
    from fmsplat.apps.demo import DemoConfig
    from fmsplat.fields.configs import DEFAULT_METHOD

    out = CliRunner().invoke(app, ["fit", str(copy_scene)])
    assert isinstance(out.exception, Done), out.output
    assert seen["method"] == DEFAULT_METHOD == "lift" and DemoConfig().methods == (DEFAULT_METHOD,)

    out = CliRunner().invoke(app, ["fit", "--help"])
    assert out.exit_code == 0
    for text in ("Presets (--preset)", "fmgs:", "pyramid_tile_input (int; 0, cpu 96)", "joint (bool; False)",
                 "optimizer (radam|adam; radam, cpu adam)"):
        assert text in out.output, text


def _random_fields():
    """One small field of each method with random parameters, on 300 random Gaussians."""
    import numpy as np

    from fmsplat.fields import distill, fmgs, m3
    from fmsplat.fields.base import SpaceSpec
    from fmsplat.gaussians import GaussianModel
    from fmsplat.scene import Camera

    torch.manual_seed(0)
    g = GaussianModel.random(300, -1.0, 1.0, sh_degree=0)
    with torch.no_grad():
        g.opacities.fill_(2.0)
    lang = SpaceSpec("lang", "fake", dim=40, key="fake-lang", language_aligned=True)
    align = SpaceSpec("align", "fake2", dim=7, key="fake-align")
    out = [distill.DistillField(g, [lang, align], distill.Config(dim=5)),
           fmgs.FMGSField(g, [lang, align], fmgs.Config(grids=((2, 4, 8),), log2_table=10, hidden=16,
                                                         language_layers=2)),
           m3.M3Field(g, [lang, align], m3.Config(query_scale=1.0, query_rank=0), {"lang": torch.randn(9, 40), "align": torch.randn(6, 7)})]
    for f in out:
        with torch.no_grad():
            for p in f.parameters():
                p.copy_(torch.randn_like(p))
            if isinstance(f, fmgs.FMGSField):
                f.grid.table.copy_(torch.randn_like(f.grid.table))
    viewmat = np.eye(4)
    viewmat[2, 3] = 4.0
    camera = Camera(K=np.array([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]]), viewmat=viewmat, width=32, height=24)
    return out, camera


def test_render_template_and_text_dots_agree_for_every_method():
    """FeatureField.render sizes the camera and decodes each space; render_text_dots (through a
    method's linear last map where it has one) gives the same products as the decoded features (M3 with
    its exact attention: its grid and low-rank shortcuts are tested in test_m3)."""
    fields_, camera = _random_fields()
    texts = torch.nn.functional.normalize(torch.randn(3, 40), dim=1)
    for f in fields_:
        out = f.render(camera, size=(16, 12))
        assert out.camera.width == 16 and out.camera.height == 12 and set(out.features) == {"lang", "align"}
        assert out.features["lang"].shape == (40, 12, 16) and out.features["align"].shape == (7, 12, 16)
        assert float(out.alpha.max()) > 0.5, f.method  # the Gaussians are in view
        dots, sq, r = f.render_text_dots(camera, "lang", texts, size=(16, 12))
        feats = out.features["lang"].reshape(40, -1)
        # what relevancy uses: cosines of the texts with the rendered features
        cos = (dots / sq.clamp_min(1e-12).sqrt()).reshape(3, -1)
        torch.testing.assert_close(cos, texts @ torch.nn.functional.normalize(feats, dim=0), atol=1e-3, rtol=1e-3,
                                   msg=f.method)
        if f.method != "fmgs":  # fmgs gives the products of its unnormalised head output (unit features)
            torch.testing.assert_close(dots.reshape(3, -1), texts @ feats, atol=1e-3, rtol=1e-3, msg=f.method)
            torch.testing.assert_close(sq.reshape(-1), (feats * feats).sum(0), atol=1e-3, rtol=1e-3, msg=f.method)
        with pytest.raises(FieldError, match="no space 'nope'"):
            f.render(camera, ["nope"])


def test_a_run_removes_what_a_killed_checkpoint_write_left(tmp_path):
    """A checkpoint write killed outright (SIGKILL: no except clause runs) leaves its temporary file beside
    the checkpoint; the next run of that checkpoint deletes it, and nothing else."""
    from fmsplat import atomic
    from fmsplat.engine import Run

    ckpt = tmp_path / "fields" / "m3" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(ckpt) as tmp:
        leftover = tmp.with_name(tmp.name.replace(".tmp", "-killed.tmp"))
        tmp.write_bytes(b"half")
        shutil.copy(tmp, leftover)  # what SIGKILL would have left: the except clause below removes `tmp` only
        raise KeyboardInterrupt
    mine = ckpt.parent / "notes.tmp.pt"
    mine.write_text("not a checkpoint's")
    assert leftover.is_file() and not ckpt.exists()
    Run(name="test", steps=1, checkpoint=ckpt, identity={}, seed=0, checkpoint_every=1, progress=False)
    assert not leftover.exists() and mine.is_file()


def test_subset_keeps_every_kept_gaussians_features_for_every_method():
    """FeatureField.subset (what fmsplat edit cuts fields with): the kept Gaussians carry the features they
    had, in every space, for every method; an empty or wrong-sized mask is a named error."""
    fields_, _ = _random_fields()
    keep = torch.rand(len(fields_[0].gaussians), generator=torch.Generator().manual_seed(0)) < 0.6
    for f in fields_:
        sub = f.subset(keep)
        assert type(sub) is type(f) and len(sub.gaussians) == int(keep.sum())
        torch.testing.assert_close(sub.gaussians.means, f.gaussians.means[keep])
        for alias in f.spaces:
            torch.testing.assert_close(sub.gaussian_features(alias), f.gaussian_features(alias)[keep],
                                       atol=1e-5, rtol=1e-5, msg=f"{f.method} {alias}")
        with pytest.raises(FieldError, match="at least one"):
            f.subset(torch.zeros_like(keep))
        with pytest.raises(FieldError, match="mask of shape"):
            f.subset(keep[:-1])
