"""Embedded default extractors (EfficientNet-Lite0 with its real ImageNet weights, offline)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from fmsplat.foundation import cosine_similarity, get_extractor, list_extractors, to_bchw
from fmsplat.foundation.effnet import imagenet_class_names


@pytest.fixture(scope="module")
def effnet():
    return get_extractor("effnet")


def _photo(img: np.ndarray, height: int) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, size=(height, round(height * img.shape[1] / img.shape[0])), mode="bilinear", antialias=True)


@pytest.fixture(scope="module")
def composite():
    """Cat | coffee mug | rocket side by side, each 224 × 336 (all three photos are 3:2)."""
    return torch.cat([_photo(skdata.chelsea(), 224), _photo(skdata.coffee(), 224), _photo(skdata.rocket(), 224)], dim=-1)


def test_registry_names_and_errors():
    names = list_extractors()
    assert {"effnet", "effnet-mid", "clip:<id>", "siglip:<id>", "dino:<id>", "dinov2:<id>"} <= set(names)
    with pytest.raises(ValueError, match="unknown extractor 'nope'.*effnet"):
        get_extractor("nope")
    with pytest.raises(ValueError, match="lacks a model"):
        get_extractor("clip:")


def test_class_names_are_imagenet_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[285] == "Egyptian cat" and names[504] == "coffee mug" and names[657] == "missile"


def test_dense_map_shape_layouts_and_key(effnet):
    x = torch.rand(2, 3, 100, 130)
    feats = effnet.encode_images(x)
    assert feats.shape == (2, 1280, math.ceil(100 / 32), math.ceil(130 / 32))
    assert effnet.grid_size(100, 130) == feats.shape[-2:]
    # channels-last input gives the same features
    torch.testing.assert_close(effnet.encode_images(x.permute(0, 2, 3, 1)), feats)
    assert effnet.dim == 1280 and effnet.language_aligned
    assert all(c.isalnum() or c in "._+=-" for c in effnet.key)
    assert get_extractor("effnet", input_scale=2.0).key != effnet.key


def test_pooled_dense_map_reproduces_the_classifier(effnet, composite):
    """The class rows read the dense space: mean-pooled features · rows + bias == the network's logits."""
    x = composite[..., :336]
    logits = effnet.class_logits(effnet.encode_pooled(x))
    with torch.no_grad():
        reference = effnet.model((x * 255 - 127) / 128)
    torch.testing.assert_close(logits, reference, atol=1e-3, rtol=1e-4)
    assert imagenet_class_names()[int(logits.argmax())] == "Egyptian cat"
    # and per-location logits average to the same thing (pooling is linear)
    torch.testing.assert_close(effnet.class_logits(effnet.encode_images(x)).mean((2, 3)), reference, atol=1e-3, rtol=1e-4)


def test_free_text_lands_on_the_right_concepts(effnet):
    names = imagenet_class_names()
    w = effnet.class_weights(["kitty", "coffee cup", "rocket"])
    cats = {"tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert float(w[0, [names.index(c) for c in cats]].sum()) > 0.8
    assert names[int(w[1].argmax())] in {"coffee mug", "cup"}
    assert names[int(w[2].argmax())] == "missile"
    text = effnet.encode_text(["cat", "kitty", "rocket"])
    assert text.shape == (3, 1280)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    assert float(text[0] @ text[1]) > 0.8 > float(text[0] @ text[2]) + 0.3


def test_composite_queries_peak_in_the_right_third(effnet, composite):
    """Real semantics: cat | coffee mug | rocket; each query's dense-similarity peak lies in its third."""
    feats = effnet.encode_images(composite)
    sim = cosine_similarity(feats, effnet.encode_text(["cat", "coffee cup", "rocket", "kitty"]))[0]  # (4, h, w)
    w = sim.shape[-1]
    peaks = [divmod(int(s.flatten().argmax()), w) for s in sim]
    thirds = [col * 3 // w for _, col in peaks]
    assert thirds[:3] == [0, 1, 2], f"peaks {peaks} on a {tuple(sim.shape[-2:])} grid"
    # "kitty" peaks on the cat: where it peaks, the "cat" map is within 10% of its own maximum
    cat = sim[0]
    at_kitty = cat[peaks[3]]
    assert thirds[3] == 0 and at_kitty >= cat.min() + 0.9 * (cat.max() - cat.min()), (peaks, float(at_kitty))
    # and the peak is a clear one: the best cell outside the right third scores lower
    for q, third in enumerate([0, 1, 2]):
        cols = torch.arange(w) * 3 // w
        assert sim[q][:, cols == third].max() > sim[q][:, cols != third].max() + 0.02


def test_effnet_mid_is_sharper_and_not_language_aligned():
    for stride, dim in [(16, 112), (8, 40)]:
        mid = get_extractor("effnet-mid", stride=stride)
        feats = mid.encode_images(torch.rand(1, 3, 96, 64))
        assert feats.shape == (1, dim, 96 // stride, 64 // stride)
        assert not mid.language_aligned and not hasattr(mid, "encode_text")
        assert f"s{stride}" in mid.key
    with pytest.raises(ValueError, match="stride"):
        get_extractor("effnet-mid", stride=32)


def test_bad_images_are_refused_clearly():
    with pytest.raises(TypeError, match="divide 8-bit"):
        to_bchw(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_bchw(torch.full((1, 3, 4, 4), 255.0))
    with pytest.raises(ValueError, match="no axis of size 3"):
        to_bchw(torch.zeros(1, 4, 5, 6))
    assert to_bchw(np.zeros((5, 6, 3), np.float32)).shape == (1, 3, 5, 6)


def test_cosine_similarity_matches_definition():
    feats = torch.randn(2, 8, 3, 4)
    text = torch.randn(5, 8)
    sim = cosine_similarity(feats, text)
    assert sim.shape == (2, 5, 3, 4)
    ref = F.cosine_similarity(feats[1, :, 2, 3][None], text, dim=-1)
    torch.testing.assert_close(sim[1, :, 2, 3], ref)


def test_effnet_labels_paints_the_recognised_label_of_each_cell(composite):
    """M3's painted language space: every cell holds the sentence embedding of its top ImageNet class."""
    from fmsplat.foundation.effnet import class_name_embeddings
    from fmsplat.foundation.sentence import shared_sentence_encoder

    labels = get_extractor("effnet-labels")
    assert labels.language_aligned and labels.dim == 384 and labels.key != get_extractor("effnet").key
    feats = labels.encode_images(composite)[0]  # (384, h, w)
    names = labels.labels(composite)[0]
    h, w = feats.shape[-2:]
    assert (len(names), len(names[0])) == (h, w)
    table = class_name_embeddings()
    index = {n: i for i, n in enumerate(imagenet_class_names())}
    for r in range(h):
        for c in range(w):
            torch.testing.assert_close(feats[:, r, c], table[index[names[r][c]]])
    # piecewise constant: as many distinct vectors as distinct labels
    assert len(torch.unique(feats.flatten(1).T, dim=0)) == len({n for row in names for n in row})
    # text goes through the same sentence encoder, and each query's best cell lies in its own third
    text = labels.encode_text(["cat", "coffee cup", "rocket"])
    torch.testing.assert_close(text, shared_sentence_encoder().encode(["cat", "coffee cup", "rocket"]))
    sim = cosine_similarity(feats[None], text)[0]
    for q, third in enumerate([0, 1, 2]):
        cols = torch.arange(w) * 3 // w
        assert sim[q][:, cols == third].max() > sim[q][:, cols != third].max(), (q, names)
    # unconfident cells are left unlabelled (zero), as unlabelled regions of M3's painted maps
    strict = get_extractor("effnet-labels", min_prob=0.9).encode_images(composite)[0]
    zero = strict.abs().sum(0) == 0
    assert 0 < int(zero.sum()) < h * w
    torch.testing.assert_close(strict[:, ~zero], feats[:, ~zero])


def test_flip_averaging_makes_the_map_mirror_equivariant(composite):
    """flip=True (test-time augmentation): the features of a mirrored photo are the mirrored features of the
    photo, exactly (one look and its mirror, averaged); without it they are not (the network's "same"
    padding is asymmetric), and the cat | mug | rocket composite still peaks in the right thirds."""
    plain, flipped = get_extractor("effnet-mid"), get_extractor("effnet-mid", flip=True)
    assert flipped.key != plain.key and "flip" in flipped.key  # cached apart
    x = composite[..., :480]
    a, b = flipped.encode_images(x), flipped.encode_images(x.flip(-1))
    assert torch.allclose(b, a.flip(-1), atol=1e-5)
    p, q = plain.encode_images(x), plain.encode_images(x.flip(-1))
    assert (q - p.flip(-1)).abs().max() > 100 * (b - a.flip(-1)).abs().max()
    lang = get_extractor("effnet", flip=True)
    sim = cosine_similarity(lang.encode_images(composite), lang.encode_text(["cat", "coffee cup", "rocket"]))[0]
    w = sim.shape[-1]
    assert [int(s.flatten().argmax()) % w * 3 // w for s in sim] == [0, 1, 2]
    with pytest.raises(ValueError, match="flip must be true or false"):
        get_extractor("effnet", flip="yes")
