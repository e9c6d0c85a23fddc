"""`fmsplat demo` end to end on the tiny preset. The scene and 3DGS stages are pre-filled from the
session fixtures, so the demo must skip them (its resume rule) and run features, fit and evaluation."""

from __future__ import annotations

import json
import shutil

from fmsplat.apps.demo import DemoConfig, run_demo


def test_demo_skips_finished_stages_and_writes_a_report(tiny_dataset, tiny_scene, tmp_path):
    work = tmp_path / "demo"
    shutil.copytree(tiny_dataset, work / "data")
    shutil.copytree(tiny_scene, work / "scene", ignore=shutil.ignore_patterns("fields", "eval"))
    ply = work / "scene" / "gaussians.ply"
    before = ply.stat().st_mtime_ns

    report = run_demo(work, DemoConfig(preset="tiny", methods=("distill",), fit_steps=40), progress=False)

    assert ply.stat().st_mtime_ns == before  # the trained scene was reused, not retrained
    text = (report / "README.md").read_text()
    assert "teacher" in text and "distill" in text
    demo = json.loads((report / "demo.json").read_text())
    assert [s["stage"] for s in demo["stages"]][:2] == ["labelled scene (tiny)", "3DGS training"]
    summary = json.loads((report / "distill" / "eval.json").read_text())
    assert (work / "scene" / "fields" / "distill" / "field.json").is_file()
    # the evaluation scored every labelled (view, object) pair, with metrics in range, and the report
    # table carries the method's own figures
    from fmsplat.scene.labels import read_label_dir

    labels = read_label_dir(work / "data")
    assert len(summary["queries"]) == sum(len(v.categories()) for v in labels.values()) > 0
    s = summary["summary"]
    assert 0.0 <= s["loc_acc"] <= 1.0 and 0.0 <= s["miou"] <= 1.0
    row = next(line for line in text.splitlines() if line.startswith("| distill"))
    assert f"{100 * s['loc_acc']:.1f}" in row
    assert list((report / "distill").glob("*.png")) or list((report / "distill").rglob("*.png"))


def test_demo_fits_slow_methods_with_its_cpu_budget(tiny_dataset, tiny_scene, tmp_path, monkeypatch):
    """FMGS and M3 paper defaults take hours on 2 cores: the demo fits with the cpu preset (and
    --fit-steps replaces only the step count)."""
    import pytest

    import fmsplat.fields as fields
    from fmsplat.fields.configs import make_config

    work = tmp_path / "demo"
    shutil.copytree(tiny_dataset, work / "data")
    shutil.copytree(tiny_scene, work / "scene", ignore=shutil.ignore_patterns("fields", "eval"))
    seen = []

    class Stop(Exception):
        pass

    def fake_fit(scene_dir, method, **kw):
        seen.append((method, kw))
        raise Stop

    monkeypatch.setattr(fields, "fit_field", fake_fit)
    with pytest.raises(Stop):
        run_demo(work, DemoConfig(preset="tiny", methods=("fmgs",)), progress=False)
    with pytest.raises(Stop):
        run_demo(work, DemoConfig(preset="tiny", methods=("m3",), fit_steps=7), progress=False)
    (m1, kw1), (m2, kw2) = seen
    assert m1 == "fmgs" and kw1["preset"] == "cpu" and "steps" not in kw1
    cpu = make_config("fmgs", kw1["preset"])
    assert (cpu.pyramid_tile_input, cpu.render_scale, cpu.optimizer, cpu.steps) == (96, 0.25, "adam", 1200)
    assert m2 == "m3" and kw2["steps"] == 7 and kw2["preset"] == "cpu"
    assert make_config("m3", "cpu", {"steps": 7}).lr_queries == 0.05
