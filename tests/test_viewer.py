"""`fmsplat view`: the viser viewer in a real browser (headless Chromium, software WebGL).

The page is opened, a label is typed into the Phrase box (keyboard input over the DevTools protocol), and
the screenshot must show the answer: the panel says FOUND, and the highlighted (magenta) Gaussians cover
the object where the browser's camera (set to dataset view 0) sees it. The screenshot is kept under
FMSPLAT_ARTIFACTS (when set) or the test's tmp folder.
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from browser import Browser, find_chromium
from test_server import objects, oracle_scene, register_oracle  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium installed (apt-get install -y chromium; .ci/run installs it)")

PHRASE_INPUT = ("(() => { const t = [...document.querySelectorAll('input')].filter(e => e.type === 'text');"
                " const i = t.findIndex(e => e.value.startsWith('object,')); return i > 0 ? t[i - 1] : null; })()")
WIDTH, HEIGHT = 960, 640


def magenta(img: np.ndarray) -> np.ndarray:
    r, g, b = (img[..., k].astype(int) for k in range(3))
    return (r > 180) & (b > 180) & (g < 90)


def test_viewer_answers_a_typed_label_in_the_browser(oracle_scene, objects, tmp_path):  # noqa: F811
    from PIL import Image

    from fmsplat.query import SceneQuery
    from fmsplat.apps.viewer import Viewer

    with pytest.MonkeyPatch.context() as mp:
        register_oracle(mp)
        sq = SceneQuery.open(oracle_scene, method="oracle")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    viewer = Viewer(sq, "127.0.0.1", port, out=tmp_path / "sel", start_view=0)
    browser = Browser(WIDTH, HEIGHT)
    try:
        browser.goto(f"http://127.0.0.1:{viewer.port}/")
        assert browser.wait_for(f"!!({PHRASE_INPUT})", 180), "the viewer's GUI never appeared"
        time.sleep(2)
        before = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
        browser.type_into(PHRASE_INPUT, "cat")
        t0 = time.time()
        while (viewer.answer is None or viewer.answer.text != "cat") and time.time() - t0 < 60:
            time.sleep(0.1)
        assert viewer.answer is not None and viewer.answer.found, "typing 'cat' did not reach the viewer"
        assert browser.wait_for("document.body.innerText.includes(\"FOUND 'cat'\")", 60)
        time.sleep(4)  # the re-coloured splats reach the browser and are drawn
        shot = browser.screenshot()
        # "Save selection (PLY)", clicked in the page, writes the object's Gaussians
        assert browser.eval("(() => { const b = [...document.querySelectorAll('button')].find("
                            "e => e.innerText.includes('Save selection')); if (!b) return false; b.click(); return true; })()")
        ply = tmp_path / "sel" / "cat.ply"
        t0 = time.time()
        while not ply.is_file() and time.time() - t0 < 30:
            time.sleep(0.1)
    finally:
        browser.close()
        viewer.stop()
    artifacts = Path(os.environ.get("FMSPLAT_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "viewer_cat.png").write_bytes(shot)
    from fmsplat.gaussians import GaussianModel

    # the whole object, as the viewer highlights it and `fmsplat query` writes it
    assert ply.is_file() and len(GaussianModel.load_ply(ply)) == int(viewer.sq.whole_object(viewer.answer).sum())
    after = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    assert after.shape[:2] == (HEIGHT, WIDTH)
    assert magenta(before).sum() < 50
    hit = magenta(after)
    hit[:, int(0.64 * WIDTH):] = False  # the GUI panel (top right) is no part of the scene
    assert hit.sum() > 2000, hit.sum()
    # where the browser's camera (dataset view 0's pose and vertical field of view) sees the cat's box centre
    cam = sq.dataset.cameras[0]
    obj = objects["cat"]
    centre = (np.asarray(obj.aabb_min) + np.asarray(obj.aabb_max)) / 2
    pc = cam.viewmat[:3, :3] @ centre + cam.viewmat[:3, 3]
    f = (HEIGHT / 2) / (cam.height / 2 / cam.fy)
    u, v = WIDTH / 2 + f * pc[0] / pc[2], HEIGHT / 2 + f * pc[1] / pc[2]
    ys, xs = np.nonzero(hit)
    assert abs(xs.mean() - u) < 0.15 * WIDTH and abs(ys.mean() - v) < 0.15 * HEIGHT, (xs.mean(), ys.mean(), u, v)
    assert hit[int(v) - 5:int(v) + 6, int(u) - 5:int(u) + 6].mean() > 0.3 or hit.sum() > 20000
