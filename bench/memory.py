"""Speed, size and coverage of M3 memory banks: official Algorithm 1 vs the fast streaming bank.

    python bench/memory.py                                  # bench preset scene, default models and sizes
    python bench/memory.py --data DIR --views 12,24,48 --models effnet,effnet-mid@stride=8
    python bench/memory.py --taus 0.7,0.75,0.8,0.85,0.9 --views 72    # the tau trade-off

Real effnet features of a synthetic scene (generated on first use under --work, default
/tmp/fmsplat-bench-memory, with `fmsplat.scene.synthetic.make_scene(preset="bench")`; features are
cached there). For each model and number of views it reports the rows P (pixel features of those
views), then for each method: seconds, bank entries, the fraction of rows with a bank entry at
cosine >= tau ("cover"), wall and CPU seconds (process time: with --threads 1 it is the single-core cost,
robust to other load on the machine), the mean best cosine of a row to the bank, the peak resident memory of the
build (VmHWM, reset before each method) and the streaming variant (the fast bank grown view by view,
which gives the same bank). Algorithm 1 is skipped above --max-alg1-rows (its time grows as P²).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _features(data_dir: Path, work: Path, model: str):
    from fmsplat.fields.base import parse_space
    from fmsplat.foundation.cache import extract_features
    from fmsplat.scene import load_dataset

    ds = load_dataset(data_dir)
    spec = parse_space(model)
    cache = extract_features(ds, spec.extractor(), work / "cache", progress=True)
    names = [c.name or f"view_{i:04d}" for i, c in enumerate(ds.cameras)]
    return [cache.get(n) for n in names]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="dataset directory (default: generate the bench preset)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fmsplat-bench-memory"))
    ap.add_argument("--models", default="effnet,effnet@input_scale=2,effnet-mid,effnet-mid@stride=8")
    ap.add_argument("--views", default="12,24,48,72", help="numbers of views (first N of the scene)")
    ap.add_argument("--taus", default=None, help="thresholds (default: the M3 Config's tau of each model)")
    ap.add_argument("--max-alg1-rows", type=int, default=40_000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from fmsplat.fields.base import parse_space
    from fmsplat.fields.m3 import Config, tau_of
    from fmsplat.fields.memory import MemoryBank, flatten_views, similarity_reduction

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data
    if data is None:
        data = args.work / "data"
        if not data.is_dir():
            from fmsplat.scene.synthetic import make_scene

            print(f"generating the bench preset scene in {data} ...", flush=True)
            make_scene(data, preset="bench", seed=0)
    views = [int(v) for v in args.views.split(",")]
    print(f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    header = (f"{'model':24} {'views':>5} {'rows':>7} {'tau':>5} | {'method':11} {'wall s':>7} {'cpu s':>7} {'entries':>7} "
              f"{'cover':>6} {'meancos':>7} {'peakMB':>7}")
    print(header)
    print("-" * len(header))
    for model in args.models.split(","):
        maps = _features(data, args.work, model)
        spec = parse_space(model)
        taus = [float(t) for t in args.taus.split(",")] if args.taus else [tau_of(Config(), spec)]
        for n in views:
            x = flatten_views(maps[:n])
            for tau in taus:
                rows = []
                if x.shape[0] <= args.max_alg1_rows:
                    _reset_peak()
                    t, c = time.perf_counter(), time.process_time()
                    idx = similarity_reduction(x, tau)
                    dt, dc = time.perf_counter() - t, time.process_time() - c
                    peak = _peak_rss_mb()
                    cov = MemoryBank.from_tensors(x[idx], tau).coverage(x)
                    rows.append(("algorithm1", dt, dc, len(idx), cov, peak))
                else:
                    rows.append(("algorithm1", None, None, None, None, None))
                _reset_peak()
                t, c = time.perf_counter(), time.process_time()
                bank = MemoryBank.from_rows(x, tau, method="fast")
                dt, dc = time.perf_counter() - t, time.process_time() - c
                peak = _peak_rss_mb()
                rows.append(("fast", dt, dc, len(bank), bank.coverage(x), peak))
                _reset_peak()
                t, c = time.perf_counter(), time.process_time()
                stream = MemoryBank(x.shape[1], tau)
                for m in maps[:n]:
                    stream.add(m.reshape(m.shape[0], -1).T)
                dt, dc = time.perf_counter() - t, time.process_time() - c
                peak = _peak_rss_mb()
                same = "=fast" if torch.equal(stream.raw, bank.raw) else "DIFFERS"
                rows.append((f"stream{same}", dt, dc, len(stream), stream.coverage(x), peak))
                for name, dt, dc, k, cov, peak in rows:
                    if dt is None:
                        print(f"{model:24} {n:5d} {x.shape[0]:7d} {tau:5.2f} | {name:11} {'skipped (P > --max-alg1-rows)':>40}")
                        continue
                    print(f"{model:24} {n:5d} {x.shape[0]:7d} {tau:5.2f} | {name:11} {dt:7.2f} {dc:7.2f} {k:7d} "
                          f"{cov['covered']:6.3f} {cov['mean_best_cos']:7.3f} {peak:7.0f}", flush=True)


if __name__ == "__main__":
    main()
