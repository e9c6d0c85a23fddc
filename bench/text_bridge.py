"""The embedded teacher's text bridge: does a phrase reach the ImageNet classes a person would name?

    python bench/text_bridge.py

Three phrase sets, each scored with the sentence similarity alone and with the WordNet lexicon
(fmsplat.foundation.lexicon) mixed in, as `EffNetExtractor.class_weights` does by default:
- everyday: bench/data/everyday_phrases.tsv, 119 phrases written by hand (not from WordNet) with the
  classes a person would accept ("bulldozer" → tractor, "sofa" → studio couch);
- WordNet: 250 noun lemmas of WordNet that name exactly one class and are not a class name (a fixed
  seed), the class being what the lexicon gives: it measures what the lookup adds, and is by
  construction the lexicon's own answer;
- class names: the 1,000 names themselves (the bridge must keep them where they were).
Top-1: the heaviest class is an accepted one; top-5: one of the five heaviest is; weight: the mean share
of the weight on accepted classes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from fmsplat.foundation.effnet import EffNetExtractor, imagenet_class_names
from fmsplat.foundation.lexicon import _table

HERE = Path(__file__).resolve().parent


def everyday() -> list[tuple[str, list[str]]]:
    rows = []
    for line in (HERE / "data" / "everyday_phrases.tsv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            phrase, accepted = line.split("\t")
            rows.append((phrase, accepted.split("|")))
    return rows


def wordnet_set(n: int = 250, seed: int = 0) -> list[tuple[str, list[str]]]:
    names = imagenet_class_names()
    lower = {x.lower() for x in names}
    lemmas = _table()["lemmas"]
    pool = sorted(k for k, v in lemmas.items() if len(v) == 1 and k not in lower and k.isascii() and not k[0].isupper())
    return [(k, [names[lemmas[k][0]]]) for k in random.Random(seed).sample(pool, n)]


def score(ext: EffNetExtractor, rows, lexicon: bool) -> tuple[float, float, float]:
    names = imagenet_class_names()
    index = {x: i for i, x in enumerate(names)}
    top1 = top5 = mass = 0.0
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        w = ext.class_weights([p for p, _ in chunk], lexicon=lexicon)
        for row, (_, accepted) in zip(w, chunk):
            ok = torch.as_tensor([index[a] for a in accepted])
            best = torch.topk(row, 5).indices
            top1 += float(best[0] in ok)
            top5 += float(bool(torch.isin(best, ok).any()))
            mass += float(row[ok].sum())
    return top1 / len(rows), top5 / len(rows), mass / len(rows)


def main() -> None:
    ext = EffNetExtractor()
    sets = {"everyday (hand-written)": everyday(), "WordNet lemmas (the lexicon's own)": wordnet_set(),
            "class names": [(x, [x]) for x in imagenet_class_names()]}
    print("| phrases | n | sentence only: top-1 / top-5 / weight | with lexicon: top-1 / top-5 / weight | s |")
    print("|---|---|---|---|---|")
    for name, rows in sets.items():
        t = time.perf_counter()
        a, b = score(ext, rows, False), score(ext, rows, True)
        print(f"| {name} | {len(rows)} | {a[0]:.1%} / {a[1]:.1%} / {a[2]:.2f} | {b[0]:.1%} / {b[1]:.1%} / {b[2]:.2f} | "
              f"{time.perf_counter() - t:.1f} |")


if __name__ == "__main__":
    main()
