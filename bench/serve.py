"""Load test of `fmsplat serve` on loopback: N concurrent clients for a fixed time per route; requests per
second, p50/p99 latency and the error count (must be 0) per route; a Markdown table on stdout.

    python bench/serve.py SCENE [--method M] [--clients 4] [--seconds 10] [--text "cat"] [--view 0]
    python bench/serve.py --tiny            # builds the tiny labelled scene with an oracle field first
    python bench/serve.py --tiny --soak --clients 8 --seconds 600   # a new phrase in every /query; RSS sampled

The server is the real one (uvicorn, HTTP over 127.0.0.1) in this process's thread; the clients are
threads with keep-alive connections (http.client).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def tiny_oracle_scene(root: Path) -> Path:
    """The tiny synthetic room, trained briefly, with an oracle field (known answers; no fitting)."""
    from fmsplat.eval.oracle import OracleField

    from fmsplat.reconstruct import TrainConfig, train_gaussians
    from fmsplat.scene.synthetic import make_scene

    data = make_scene(root / "data", preset="tiny", seed=0)
    scene = root / "scene"
    train_gaussians(data, scene, TrainConfig(steps=300, max_gaussians=12_000, sh_degree=1, strategy="3dgs"),
                    progress=False)
    from fmsplat.workspace import Workspace
    OracleField.paint(Workspace.open(scene).gaussians, Path(data) / "objects.json").save(scene)
    return scene


def register_oracle() -> None:
    import fmsplat.fields as fields
    from fmsplat.eval.oracle import OracleConfig

    fields.METHODS["oracle"] = "fmsplat.eval.oracle"
    try:
        from fmsplat.fields import configs

        configs.CONFIGS.setdefault("oracle", type("OracleFitConfig", (OracleConfig,), {"method": "oracle"}))
    except ImportError:
        pass


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def new_phrases():
    """An endless stream of distinct phrases (word combinations and a serial number)."""
    colours = ("red", "blue", "old", "shiny", "wooden", "tiny", "broken", "striped")
    things = ("cup", "chair", "lamp", "box", "book", "plant", "clock", "vase", "shoe", "bottle")
    i = 0
    while True:
        yield f"{colours[i % 8]} {things[i // 8 % 10]} number {i}"
        i += 1


def load(port: int, method: str, path: str, body, clients: int, seconds: float) -> dict:
    """`clients` keep-alive clients for `seconds`; `body` a dict, None, or a callable giving each request's."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    fixed = None if body is None or callable(body) else json.dumps(body).encode()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], 0
        while time.perf_counter() < stop:
            if callable(body):
                with lock:
                    payload = json.dumps(body()).encode()
            else:
                payload = fixed
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    bad += 1
            except OSError:
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    a = np.asarray(lat) * 1e3
    return {"requests": len(a), "rps": len(a) / wall, "p50": float(np.percentile(a, 50)) if len(a) else float("nan"),
            "p99": float(np.percentile(a, 99)) if len(a) else float("nan"), "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scene", nargs="?")
    ap.add_argument("--tiny", action="store_true", help="build the tiny oracle scene in a temporary folder")
    ap.add_argument("--method", default=None)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--text", default="cat")
    ap.add_argument("--view", type=int, default=0)
    ap.add_argument("--soak", action="store_true", help="only POST /query, a new phrase in every request, with RSS "
                                                        "sampled every 10 s")
    args = ap.parse_args()
    from fmsplat.apps.server import Limits, SceneService, make_server

    tmp = None
    if args.tiny or args.scene is None:
        tmp = tempfile.TemporaryDirectory(prefix="fmsplat-bench-serve-")
        args.scene, args.method = tiny_oracle_scene(Path(tmp.name)), "oracle"
    if args.method == "oracle":
        register_oracle()
    t0 = time.perf_counter()
    service = SceneService.open(args.scene, method=args.method, limits=Limits(max_renders=args.clients))
    load_s = time.perf_counter() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(service, "127.0.0.1", port)
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.02)
    cam = service.sq.dataset.cameras[args.view]
    if args.soak:
        soak(service, port, args)
        server.should_exit = True
        th.join(10)
        return
    routes = [
        ("GET /health", "GET", "/health", None),
        ("GET /scene", "GET", "/scene", None),
        ("POST /query (3D, no view)", "POST", "/query", {"text": args.text}),
        ("POST /query (with view)", "POST", "/query", {"text": args.text, "view": args.view}),
        ("POST /render rgb", "POST", "/render", {"kind": "rgb", "view": args.view}),
        ("POST /render relevancy", "POST", "/render", {"kind": "relevancy", "view": args.view, "text": args.text}),
        ("POST /select (PLY)", "POST", "/select", {"text": args.text}),
    ]
    print(f"scene {args.scene} ({service.sq.field.method}, {len(service.sq.field.gaussians)} Gaussians, views "
          f"{cam.width}x{cam.height}); load {load_s:.1f} s (warm-up {service.warm_ms / 1e3:.1f} s); "
          f"{args.clients} clients x {args.seconds:.0f} s per route\n")
    print("| route | requests | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    total_errors = 0
    for name, method, path, body in routes:
        r = load(port, method, path, body, args.clients, args.seconds)
        total_errors += r["errors"]
        print(f"| {name} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |",
              flush=True)
    server.should_exit = True
    th.join(10)
    if tmp is not None:
        tmp.cleanup()
    if total_errors:
        raise SystemExit(f"{total_errors} errors")


def soak(service, port: int, args) -> None:
    """POST /query with a phrase never asked before in every request; RSS at the start, every 10 s, at the end."""
    phrases = new_phrases()
    samples = [(0.0, rss_mb())]
    done = threading.Event()

    def sampler():
        t0 = time.perf_counter()
        while not done.wait(10):
            samples.append((time.perf_counter() - t0, rss_mb()))

    threading.Thread(target=sampler, daemon=True).start()
    r = load(port, "POST", "/query", lambda: {"text": next(phrases)}, args.clients, args.seconds)
    done.set()
    samples.append((args.seconds, rss_mb()))
    after = [m for t, m in samples if t >= 60] or [samples[-1][1]]
    print(f"scene {args.scene} ({service.sq.field.method}, {len(service.sq.field.gaussians)} Gaussians); "
          f"{args.clients} clients x {args.seconds:.0f} s, a new phrase in every POST /query\n")
    print("| requests | errors | req/s | p50 ms | p99 ms | RSS start MB | RSS at 1 min MB | RSS end MB | RSS max MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {r['requests']} | {r['errors']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {samples[0][1]:.0f} | "
          f"{after[0]:.0f} | {samples[-1][1]:.0f} | {max(m for _, m in samples):.0f} |")
    print("\nRSS every 10 s (MB): " + ", ".join(f"{m:.0f}" for _, m in samples))
    if r["errors"]:
        raise SystemExit(f"{r['errors']} errors")


if __name__ == "__main__":
    main()
