"""What WordNet knows of the ImageNet classes: a phrase outside the 1,000 class names reaches the
classes a person would name ("bulldozer" → tractor, "kitty" → the domestic cats, "sofa" → studio couch).

The embedded teacher (fmsplat.foundation.effnet) sees the world through ImageNet's 1,000 classes, and
its text bridge weighs them by the sentence similarity of the phrase to their names. That similarity
knows words, not things: "bulldozer" lands on plane, crate and power drill. ImageNet's classes are
WordNet synsets, so WordNet's hierarchy says which classes a noun is, is a kind of, or is near:

- every sense's classes at or under it ("dog" → the 118 dog breeds; more than 130 is too general to
  name anything: "animal", "device");
- else the nearest classes above it, within two hypernym steps ("bulldozer" → tractor);
- else the classes under its parent when that has at most 12 below it ("pagoda" → church, mosque,
  stupa: the temples).

The table (`data/imagenet_lexicon.json.gz`, 28k WordNet noun lemmas, built from Princeton WordNet 3.0
by tools/build_lexicon.py; WordNet's license in `data/WORDNET_LICENSE`) ships with the package. A phrase
is looked up whole, then singular, then by its last words (English puts the head noun last: "yellow toy
bulldozer" → "bulldozer"), then the part before "of" ("cup of coffee" → "cup"). What WordNet does not
hold ("smartphone", brand names) or holds without a class near it ("circuit board": not read as its last
word "board") gets no lexicon classes, and the bridge stays the sentence similarity alone.
"""

from __future__ import annotations

import gzip
import json
import re
from functools import lru_cache
from importlib import resources

_ARTICLES = {"a", "an", "the", "some", "my", "this", "that"}


@lru_cache(maxsize=1)
def _table() -> dict:
    raw = resources.files("fmsplat.foundation").joinpath("data/imagenet_lexicon.json.gz").read_bytes()
    data = json.loads(gzip.decompress(raw).decode("utf-8"))
    if len(data.get("classes", ())) != 1000 or not isinstance(data.get("lemmas"), dict):
        raise RuntimeError("fmsplat/foundation/data/imagenet_lexicon.json.gz is damaged; reinstall fmsplat")
    return data


def class_entries() -> list[dict]:
    """Per ImageNet class (classifier order): its WordNet id, lemmas and gloss."""
    return _table()["classes"]


def _singular(word: str) -> list[str]:
    out = []
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.append(word[:-1])
    return out


def _candidates(text: str) -> list[str]:
    words = [w for w in re.sub(r"[^\w\s'-]", " ", text.lower()).split()]
    while words and words[0] in _ARTICLES:
        words = words[1:]
    if not words:
        return []
    def with_singular(ws: list[str]) -> list[str]:
        return [" ".join(ws)] + [" ".join(ws[:-1] + [s]) for s in _singular(ws[-1])]

    tries = with_singular(words)
    if "of" in words[1:]:  # "cup of coffee": the head comes before "of"
        tries += with_singular(words[:words.index("of", 1)])
    for k in range(1, len(words)):  # else the last words: "yellow toy bulldozer"
        tries += with_singular(words[k:])
    return tries


def phrase_classes(text: str) -> tuple[str | None, list[int]]:
    """(the WordNet lemma the phrase was read as, or None; the ImageNet class indices it names, [] when
    WordNet relates none to it)."""
    table = _table()
    lemmas = table["lemmas"]
    for cand in _candidates(text):
        if cand in lemmas:
            return cand, list(lemmas[cand])
        if " " in cand and cand in _unmapped():  # a compound WordNet knows ("circuit board") is not its last word
            return cand, []
    return None, []


@lru_cache(maxsize=1)
def _unmapped() -> frozenset[str]:
    return frozenset(_table()["unmapped"])


__all__ = ["class_entries", "phrase_classes"]
