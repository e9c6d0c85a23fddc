"""A user's mistake costs one line (issue 16): user errors print `fmsplat <command>: <message>` on
stderr (usage errors: that line plus a pointer to --help) with a non-zero exit code; no traceback
unless --debug; train never silently replaces an existing scene."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fmsplat.apps.cli import app
from fmsplat.workspace import Workspace


def _run(args):
    return CliRunner().invoke(app, args)


def _short(res, code: int, *needles: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == code, res.output
    assert 1 <= len(lines) <= 2, res.stderr
    assert "Traceback" not in res.output and "╭" not in res.output, res.output
    for needle in needles:
        assert needle in res.stderr, res.stderr


@pytest.fixture
def bad_dataset(tmp_path):
    """A one-frame transforms.json dataset whose focal length is 0."""
    from PIL import Image

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (16, 12)).save(root / "images" / "0000.png")
    c2w = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]
    (root / "transforms.json").write_text(json.dumps({"fl_x": 0, "w": 16, "h": 12, "frames": [
        {"file_path": "images/0000.png", "transform_matrix": c2w}]}))
    return root


def test_missing_and_bad_inputs_cost_one_line(tmp_path, bad_dataset):
    _short(_run(["train", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]), 1, "fmsplat train:", "does not exist")
    _short(_run(["train", str(bad_dataset), "--out", str(tmp_path / "o")]), 1, "transforms.json", "'fl_x'", "got 0")
    _short(_run(["render", str(tmp_path / "nothing")]), 1, "fmsplat render:", "scene.json")
    _short(_run(["fit", str(tmp_path / "nothing")]), 1, "fmsplat fit:", "scene.json")
    _short(_run(["eval", str(tmp_path / "nothing")]), 1, "fmsplat eval:", "scene.json")


def test_a_dataset_given_as_a_scene_says_so(bad_dataset):
    res = _run(["render", str(bad_dataset)])
    _short(res, 1, "is a dataset, not a trained scene", f"fmsplat train {bad_dataset} --out SCENE")
    assert "--out " + str(bad_dataset) not in res.stderr


def test_train_options_are_the_config(tmp_path, monkeypatch):
    """fmsplat train has one option per TrainConfig setting (none hand-kept), each read by the setting's
    declared type: a value of every kind given on the command line reaches the config unchanged, and a
    setting not given keeps the config's default."""
    import dataclasses

    import fmsplat.reconstruct
    from fmsplat.reconstruct.configs import TrainConfig

    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    seen = []
    monkeypatch.setattr(fmsplat.reconstruct, "train_gaussians",
                        lambda data, out, cfg, resume: seen.append(cfg) or {"num_gaussians": 1, "test": {}})
    (tmp_path / "transforms.json").write_text("{}")
    res = _run(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--lr-quats", "0.002", "--background",
                "1,0.5,0", "--downscale", "auto", "--init", "box", "--steps", "12"])
    assert res.exit_code == 0, res.output
    cfg = seen[0]
    assert (cfg.lr_quats, cfg.background, cfg.downscale, cfg.init, cfg.steps) == (0.002, (1.0, 0.5, 0.0), None, "box", 12)
    assert cfg.lr_scales == TrainConfig().lr_scales and cfg.strategy == TrainConfig().strategy


def test_usage_errors_take_two_lines(tmp_path):
    _short(_run(["train"]), 2, "fmsplat train:", "Missing argument", "--help")
    _short(_run(["train", "x", "--out", "y", "--steps", "many"]), 2, "--steps")
    _short(_run(["train", "x", "--out", "y", "--strategy", "bogus"]), 2, "--strategy (3dgs|mcmc): must be one of")
    _short(_run(["train", "x", "--out", "y", "--checkpoint-every", "0"]), 2, "checkpoint_every")
    _short(_run(["no-such-command"]), 2, "No such command")
    _short(_run(["render", str(tmp_path), "--views", "test", "--path", "helix"]), 2, "helix")


def test_debug_shows_the_traceback(tmp_path):
    from fmsplat.errors import FmsplatError

    res = _run(["--debug", "fit", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and isinstance(res.exception, FmsplatError) and "scene.json" in str(res.exception)


def test_make_scene_names_the_flag(tmp_path):
    (tmp_path / "room").mkdir()
    _short(_run(["make-scene", str(tmp_path / "room")]), 1, "--overwrite")


class _FakeTrain:
    def __init__(self):
        self.calls = []

    def __call__(self, data, out, cfg, resume=False):
        self.calls.append((cfg, resume))
        return {"num_gaussians": 1, "test": {}}


@pytest.fixture
def fake_train(monkeypatch):
    import fmsplat.reconstruct

    fake = _FakeTrain()
    monkeypatch.setattr(fmsplat.reconstruct, "train_gaussians", fake)
    return fake


def test_train_refuses_a_non_empty_out(tmp_path, fake_train):
    out = tmp_path / "scene"
    (out / "fields" / "m3").mkdir(parents=True)
    (out / "scene.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    res = _run(["train", str(tmp_path), "--out", str(out)])
    _short(res, 1, "is not empty", "--resume", "--overwrite")
    assert not fake_train.calls and (out / "scene.json").read_text() == "{}"

    res = _run(["train", str(tmp_path), "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert fake_train.calls[-1][1] is True and (out / "scene.json").exists()

    res = _run(["train", str(tmp_path), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert fake_train.calls[-1][1] is False
    # the old scene's outputs are gone (no stale field beside new Gaussians); other files are left alone
    assert not (out / "scene.json").exists() and not (out / "fields").exists()
    assert (out / "notes.txt").read_text() == "mine"

    _short(_run(["train", str(tmp_path), "--out", str(out), "--overwrite", "--resume"]), 2, "exclude")


def test_train_into_an_empty_or_new_out_needs_no_flag(tmp_path, fake_train):
    (tmp_path / "empty").mkdir()
    assert _run(["train", str(tmp_path), "--out", str(tmp_path / "empty")]).exit_code == 0
    assert _run(["train", str(tmp_path), "--out", str(tmp_path / "new")]).exit_code == 0
    assert len(fake_train.calls) == 2


def test_checkpoint_every_reaches_the_trainer(tmp_path, fake_train):
    res = _run(["train", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "200", "--checkpoint-every", "50"])
    assert res.exit_code == 0, res.output
    cfg = fake_train.calls[-1][0]
    assert cfg.checkpoint_every == 50 and cfg.steps == 200


def test_a_checkpointed_short_run_resumes(tiny_dataset, tmp_path):
    """--checkpoint-every makes runs of 500 steps or fewer resumable: a checkpoint left by a
    stopped run is picked up by --resume, which says where it resumed from."""
    import fmsplat.engine as engine
    import fmsplat.reconstruct.train as train_mod
    from fmsplat.reconstruct import TrainConfig

    out = tmp_path / "scene"
    args = ["train", str(tiny_dataset), "--out", str(out), "--steps", "8", "--checkpoint-every", "4",
            "--downscale", "4", "--max-gaussians", "2000", "--sh-degree", "0", "--eval-every", "0"]
    saved = []
    real_save = engine.write_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(path, state):
        real_save(path, state)
        saved.append(state["step"])
        raise Stop  # the run is killed right after its first checkpoint

    engine.write_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            train_mod.train_gaussians(tiny_dataset, out, TrainConfig(steps=8, checkpoint_every=4, downscale=4,
                                                                     max_gaussians=2000, sh_degree=0, eval_every=0),
                                      progress=False)
    finally:
        engine.write_checkpoint = real_save
    assert saved == [4] and Workspace(out).train_checkpoint.exists()

    _short(_run(args), 1, "not empty", "--resume")
    res = _run(args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming from the checkpoint at step 4" in res.output
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 4


def test_model_port_and_host_mistakes_take_two_lines(tiny_scene, tmp_path):
    """Unknown extractors, options an extractor refuses, a port out of range and a public viewer host are
    each one or two lines and a non-zero exit, with nothing written to the scene."""
    before = sorted(p.name for p in tiny_scene.iterdir())
    _short(_run(["fit", str(tiny_scene), "--models", "nosuch"]), 1, "unknown extractor 'nosuch'", "known: effnet")
    _short(_run(["features", str(tiny_scene), "--model", "nosuch"]), 1, "unknown extractor 'nosuch'")
    _short(_run(["features", str(tiny_scene), "--model", "effnet-mid@stride=9"]), 1, "effnet-mid", "stride", "9")
    _short(_run(["features", str(tiny_scene), "--model", "effnet-mid", "--opt", "strid=8"]), 1, "strid")
    _short(_run(["serve", str(tiny_scene), "--port", "99999"]), 2, "--port")
    _short(_run(["view", str(tiny_scene), "--host", "0.0.0.0"]), 1, "0.0.0.0", "no authentication")
    assert sorted(p.name for p in tiny_scene.iterdir()) == before


def test_extractor_options_follow_the_name_as_in_fit(tmp_path):
    """'effnet-mid@stride=8' names the same extractor for `features --model` as for `fit --models`."""
    from fmsplat.foundation.registry import get_extractor

    assert get_extractor("effnet-mid@stride=8").key == get_extractor("effnet-mid", stride=8).key
    assert get_extractor("effnet-mid@stride=8").key != get_extractor("effnet-mid").key


@pytest.mark.parametrize("args,flag", [
    (["eval", "S", "--render-scale", "nan"], "--render-scale"),
    (["eval", "S", "--render-scale", "0"], "--render-scale"),
    (["query", "S", "cat", "--relative", "2"], "--relative"),
    (["query", "S", "cat", "--scale", "inf"], "--scale"),
    (["render", "S", "--downscale", "-1"], "--downscale"),
    (["render", "S", "--fps", "nan"], "--fps"),
    (["serve", "S", "--max-renders", "0"], "--max-renders"),
    (["train", "D", "--out", "O", "--test-every", "-1"], "test_every"),
    (["make-scene", "O", "--video", "--frames", "0"], "--frames"),
])
def test_numbers_out_of_range_or_nan_take_two_lines(args, flag):
    """NaN passes click's range checks (every comparison with it is false): each numeric option is checked as
    a finite number in its range, a usage error (exit 2) naming the flag, before anything is read."""
    _short(_run(args), 2, flag)


def test_an_unwritable_out_is_refused_before_any_work(tiny_dataset, tmp_path, fake_train):
    """`train --out` where nothing can be written (under a file; under /proc, which even root cannot write):
    one line naming the folder, and the trainer never starts."""
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file" / "scene", "/proc/fmsplat-cannot-write/scene"):
        _short(_run(["train", str(tiny_dataset), "--out", str(out)]), 1, str(out), "cannot write here")
    assert not fake_train.calls


def test_serve_on_a_port_in_use_says_so_in_one_line(tiny_scene):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _run(["serve", str(tiny_scene), "--port", str(port)])
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("fmsplat serve: loading")]
    assert res.exit_code == 1 and len(lines) == 1, res.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "another --port" in lines[0]


@pytest.mark.parametrize("key,value,words", [("downscale", 0, "data.downscale"), ("test_every", "eight", "data.test_every"),
                                             ("test_every", 2.5, "data.test_every"), ("downscale", None, "data.downscale")])
def test_a_scene_json_edited_to_nonsense_is_one_line(copy_scene, key, value, words):
    meta = json.loads((copy_scene / "scene.json").read_text())
    meta["data"][key] = value
    (copy_scene / "scene.json").write_text(json.dumps(meta))
    _short(_run(["query", str(copy_scene), "cat"]), 1, "scene.json", words, repr(value))
