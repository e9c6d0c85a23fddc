"""The WordNet lexicon of the embedded teacher's text bridge (fmsplat.foundation.lexicon) and its use in
the bridge (EffNetExtractor.class_weights) and in presence (the classes a phrase names are no rivals).
The bridge tests run the real embedded sentence encoder (all-MiniLM-L6-v2, shipped offline)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fmsplat.foundation.effnet import imagenet_class_names
from fmsplat.foundation.lexicon import class_entries, phrase_classes
from fmsplat.query.presence import Vocabulary, presence

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _names(indices) -> set[str]:
    names = imagenet_class_names()
    return {names[i] for i in indices}


def test_the_table_is_imagenets_classes_in_classifier_order():
    entries = class_entries()
    wnids = [e["wnid"] for e in entries]
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"
    names = imagenet_class_names()
    # the shipped short names are among their synset's lemmas (spelling and the 4 disambiguated aside)
    agree = sum(n.lower() in {w.lower() for w in e["lemmas"]} for n, e in zip(names, entries))
    assert agree >= 900
    for i, e in enumerate(entries):  # a class's own lemmas name it
        assert i in phrase_classes(e["lemmas"][0])[1], e


def test_phrases_are_read_as_a_person_reads_them():
    assert _names(phrase_classes("bulldozer")[1]) == {"tractor"}  # a kind of tractor: the class above it
    assert _names(phrase_classes("a yellow toy bulldozer")[1]) == {"tractor"}  # the head noun comes last
    assert _names(phrase_classes("cups of coffee")[1]) == {"cup"}  # ... or before "of"; plurals read singular
    assert _names(phrase_classes("kitty")[1]) == {"tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert len(phrase_classes("dog")[1]) == 118  # the breeds under it
    assert phrase_classes("animal")[1] == []  # too general to name a class
    assert phrase_classes("circuit board") == ("circuit board", [])  # a compound WordNet knows: not "board"
    assert phrase_classes("smartphone") == (None, [])


def test_the_lexicon_brings_everyday_phrases_to_their_classes_and_keeps_the_class_names():
    from fmsplat.foundation.effnet import EffNetExtractor

    sys.path.insert(0, str(BENCH))
    try:
        from text_bridge import everyday, score
    finally:
        sys.path.remove(str(BENCH))
    ext = EffNetExtractor()
    rows = everyday()
    assert len(rows) >= 100
    alone, mixed = score(ext, rows, lexicon=False), score(ext, rows, lexicon=True)
    assert mixed[0] >= alone[0] + 0.08, (alone, mixed)  # top-1: 79 % -> 92 % when written
    names = [(n, [n]) for n in imagenet_class_names()[::3]]  # a third of the names (all: 99.9 % both ways)
    assert score(ext, names, lexicon=True)[0] >= score(ext, names, lexicon=False)[0] - 0.003
    w = ext.class_weights(["bulldozer"])[0]
    assert imagenet_class_names()[int(w.argmax())] == "tractor"
    assert imagenet_class_names()[int(ext.class_weights(["bulldozer"], lexicon=False)[0].argmax())] != "tractor"


def test_a_class_the_phrase_names_is_no_rival_in_presence():
    """A place that reads as a beagle: "dog" ranks behind "beagle" and the other breeds, and is absent
    unless the phrase names the place's best reading."""
    dim, n = 48, 40
    basis = torch.eye(dim)
    unit = torch.nn.functional.normalize
    emb = unit(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    breeds = [0, 1, 2, 3, 4, 5]
    emb[0] = basis[0]  # the beagle
    for j in breeds[1:]:  # breeds close to it
        emb[j] = unit(basis[0] + 0.2 * basis[j + 10], dim=0)
    dog = unit(basis[0] + 0.5 * basis[30], dim=0)  # the hypernym, less close than each breed
    vocab = Vocabulary("test", tuple(f"c{i}" for i in range(n)), emb)
    place = basis[0]
    plain = presence(place, dog, vocab)
    assert not plain.found and plain.rank == 7
    named = presence(place, dog, vocab, named=breeds)
    assert named.found and named.rank == 1 and named.score > 0.5
    # only the place's best reading counts: naming the runners-up (a motorcycle's "mountain bike") does not
    assert presence(place, dog, vocab, named=breeds[1:]).rank == plain.rank
