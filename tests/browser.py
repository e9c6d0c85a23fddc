"""A real headless Chromium driven over the DevTools protocol (no extra packages: `websockets` comes with
viser). Used by the viewer test: open a page, type into a text box, take a screenshot."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """Headless Chromium (software WebGL: SwiftShader) with one page, driven over CDP."""

    def __init__(self, width: int = 960, height: int = 640) -> None:
        from websockets.sync.client import connect

        exe = find_chromium()
        if exe is None:
            raise RuntimeError("no chromium")
        self.profile = tempfile.mkdtemp(prefix="fmsplat-chromium-")
        port = _free_port()
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--disable-gpu-sandbox", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             f"--window-size={width},{height}", f"--remote-debugging-port={port}", f"--user-data-dir={self.profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: close() takes the GPU and renderer children too
        t0, ws_url = time.time(), None
        while ws_url is None:
            if time.time() - t0 > 30 or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [p for p in json.loads(r.read()) if p.get("type") == "page"]
                ws_url = pages[0]["webSocketDebuggerUrl"] if pages else None
            except OSError:
                pass
            time.sleep(0.2)
        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=10)
        self._id = 0
        self.width, self.height = width, height
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, timeout: float = 60.0, **params):
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        t0 = time.time()
        while time.time() - t0 < timeout:
            msg = json.loads(self.ws.recv(timeout=timeout))
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise TimeoutError(method)

    def eval(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60.0) -> bool:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.eval(expression):
                return True
            time.sleep(0.25)
        return False

    def type_into(self, selector_js: str, text: str) -> None:
        """Focus the element `selector_js` evaluates to, then type `text` as keyboard input, then Enter."""
        if not self.eval(f"(() => {{ const e = {selector_js}; if (!e) return false; e.focus(); e.select && e.select(); return true; }})()"):
            raise RuntimeError(f"no element: {selector_js}")
        self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def screenshot(self, path=None) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            with open(path, "wb") as f:
                f.write(data)
        return data

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        import os
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(10)
                if sig == signal.SIGTERM:
                    time.sleep(0.5)  # let the children go, then make sure of the group
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
