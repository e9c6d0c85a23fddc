"""Markdown tables of evaluation results (fmsplat.eval.protocol.evaluate_scene dicts).

`format_comparison([r_distill, r_fmgs, r_m3])` gives one table with the methods as rows and the 2D
teacher as the reference row; `scene_report(r)` is the full eval.md of one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TEACHER = "teacher"
METHOD_ORDER = ("distill", "fmgs", "m3")


def load_result(path) -> dict:
    """An eval.json (or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "eval.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no eval.json (run fmsplat eval first)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{p}: not valid JSON ({err})") from err


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _pct(v) -> str:
    f = _num(v)
    return "–" if f is None else f"{100 * f:.1f}"


def _fix(v, digits: int = 3) -> str:
    f = _num(v)
    return "–" if f is None else f"{f:.{digits}f}"


def _ms(v) -> str:
    f = _num(v)
    return "–" if f is None else (f"{f:.0f}" if f >= 100 else f"{f:.1f}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_comparison(results: list[dict], title: str | None = None) -> str:
    """One Markdown table: the 2D teacher (reference, from the first result that scored it), then each
    method (distill, fmgs, m3 first, then any other), with localisation, segmentation, 3D, feature
    fidelity, RGB and latency columns. Results on different datasets or spaces are refused."""
    if not results:
        raise ValueError("format_comparison: no results")
    datas = {r.get("data") for r in results}
    spaces_q = {r.get("space") for r in results}
    if len(datas) > 1 or len(spaces_q) > 1:
        raise ValueError(f"format_comparison: results come from different datasets {sorted(map(str, datas))} or "
                         f"query spaces {sorted(map(str, spaces_q))}; compare like with like")
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    results = sorted(results, key=lambda r: (order.get(r.get("method"), len(order)), str(r.get("method"))))
    fid_spaces: list[str] = []
    for r in results:
        for a in (r["summary"].get("fidelity") or {}):
            if a not in fid_spaces:
                fid_spaces.append(a)
    header = ["method", "loc. acc %", "mIoU %", "mAcc %", "3D mask mIoU %", "3D lifted in-box %", "3D lifted dist", "3D Gauss in-box %",
              "3D Gauss dist", "sel. prec. %", "sel. rec. %", "found %"]
    header += [f"1−cos {a}" for a in fid_spaces] + [f"MSE {a}" for a in fid_spaces]
    header += ["PSNR", "SSIM", "ms / map"]
    rows = []
    teacher = next((r[TEACHER] for r in results if r.get(TEACHER)), None)
    if teacher:
        rows.append(["teacher (2D)", _pct(teacher["loc_acc"]), _pct(teacher["miou"]), _pct(teacher["macc"])]
                    + ["–"] * 8 + ["–"] * (2 * len(fid_spaces)) + ["–", "–", _ms(teacher.get("latency_ms"))])
    for r in results:
        s = r["summary"]
        fid = s.get("fidelity") or {}
        rows.append(
            [str(r.get("method")), _pct(s["loc_acc"]), _pct(s["miou"]), _pct(s["macc"]), _pct(s.get("miou_3d")),
             _pct(s.get("lift_in_box")),
             _fix(s.get("lift_dist_median")), _pct(s.get("gauss_in_box")), _fix(s.get("gauss_dist_median")),
             _pct(s.get("sel_precision")), _pct(s.get("sel_recall")), _pct(s.get("found"))]
            + [_fix((fid.get(a) or {}).get("one_minus_cos")) for a in fid_spaces]
            + [_fix((fid.get(a) or {}).get("mse"), 4) for a in fid_spaces]
            + [_fix(s.get("psnr"), 2), _fix(s.get("ssim")), _ms(s.get("latency_ms"))]
        )
    p = results[0].get("protocol", {})
    notes = (f"{p.get('queries', '?')} queries on {p.get('labelled_views', '?')} labelled views of `{results[0].get('data')}`, "
             f"query space `{results[0].get('space')}`; fidelity, PSNR/SSIM on {p.get('held_out_views', '?')} held-out "
             f"views. A random argmax pixel would hit {_pct(results[0]['summary'].get('loc_chance'))}% (box area). "
             f"Distances are medians in scene units (0 = inside the box); lifted in-box allows "
             f"{p.get('box_margin', '?')} × the box diagonal. ms / map: render + relevancy of one text "
             f"(teacher: extractor on the image + relevancy).")
    out = [f"## {title}", ""] if title else []
    out += [_table(header, rows), "", notes]
    return "\n".join(out) + "\n"


def scene_report(result: dict) -> str:
    """The eval.md of one evaluate_scene run: summary table, per-category table, fidelity, RGB, timing."""
    lines = [f"# Evaluation: {result.get('method')} on {result.get('scene')}", ""]
    lines.append(format_comparison([result]))
    # per category
    cats: dict[str, list[dict]] = {}
    for q in result["queries"]:
        cats.setdefault(q["category"], []).append(q)
    objs = {o["category"]: o for o in result.get("objects") or []}
    header = ["category", "queries", "loc. acc %", "mIoU %", "teacher loc. %", "teacher mIoU %", "lifted in-box %",
              "Gauss in-box", "Gauss dist", "selected", "sel. prec. %", "sel. rec. %"]
    rows = []
    for cat, qs in cats.items():
        o = objs.get(cat, {})
        t = [q[TEACHER] for q in qs if TEACHER in q]
        rows.append([
            cat, str(len(qs)), _pct(_avg(q["hit"] for q in qs)), _pct(_avg(q["iou"] for q in qs)),
            _pct(_avg(x["hit"] for x in t)) if t else "–", _pct(_avg(x["iou"] for x in t)) if t else "–",
            _pct(_avg(q["lift"].get("in_box") for q in qs)) if "in_box" in qs[0]["lift"] else "–",
            ("yes" if o.get("in_box") else "no") if o else "–", _fix(o.get("dist")) if o else "–",
            str(o.get("selected", "–")), _pct(o.get("precision")) if o else "–", _pct(o.get("recall")) if o else "–",
        ])
    lines += ["", "## Per category", "", _table(header, rows)]
    # per query
    header = ["view", "category", "hit", "IoU %", "acc %", "teacher hit", "teacher IoU %", "lifted dist", "alpha"]
    rows = []
    for q in result["queries"]:
        t = q.get(TEACHER) or {}
        rows.append([q["view"], q["category"], "✓" if q["hit"] else "✗", _pct(q["iou"]), _pct(q["acc"]),
                     ("✓" if t.get("hit") else "✗") if t else "–", _pct(t.get("iou")) if t else "–",
                     _fix(q["lift"].get("dist")), _fix(q["lift"].get("alpha"), 2)])
    lines += ["", "## Per query", "", _table(header, rows)]
    fid = result.get("fidelity") or {}
    if fid:
        rows = [[a, _fix(f["one_minus_cos"]), _fix(f["mse"], 5), "×".join(map(str, f.get("grid", [])))] for a, f in fid.items()]
        lines += ["", "## Feature fidelity (M3 protocol, held-out views)", "",
                  _table(["space", "1 − cos", "MSE", "teacher grid"], rows)]
    rgb = result.get("rgb") or {}
    if rgb.get("per_view"):
        lines += ["", f"RGB on held-out views: PSNR {_fix(rgb['psnr'], 2)} dB, SSIM {_fix(rgb['ssim'])}."]
    lat = result.get("latency") or {}
    if lat:
        lines += ["", f"Latency: {_ms(lat.get('relevancy_ms'))} ms per relevancy map at "
                      f"{'×'.join(map(str, lat.get('size', [])))} (median of {lat.get('repeats')}); teacher "
                      f"{_ms(lat.get('teacher_ms'))} ms. Evaluation took {result.get('seconds')} s."]
    if result.get("panels"):
        lines += ["", "## Panels", "", "image | relevancy (boxes: ground truth; ring: argmax, green = hit) | "
                  "mask (green: correct, red: false positive, blue: missed) | teacher relevancy", ""]
        lines += [f"![{p}]({p})" for p in result["panels"]]
    return "\n".join(lines) + "\n"


def _avg(values) -> float | None:
    vals = [float(v) for v in values if _num(v) is not None]
    return sum(vals) / len(vals) if vals else None


__all__ = ["format_comparison", "load_result", "scene_report"]
