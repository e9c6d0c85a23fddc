"""FMGS hybrid multi-scale map, with a fake extractor whose pooled embedding is the crop's mean colour."""

from __future__ import annotations

import pytest
import torch

from fmsplat.foundation.pyramid import PyramidExtractor, hybrid_feature_map, output_grid, pyramid_levels


class MeanColour:
    """Pooled embedding = (mean R, mean G, mean B, 0.05): a tile-level feature, no spatial detail."""

    key = "fake-mean-colour"
    dim = 4
    language_aligned = True
    input_size = 8

    def __init__(self):
        self.seen = 0

    def encode_pooled(self, images):
        self.seen += len(images)
        assert images.shape[-2:] == (8, 8)
        return torch.cat([images.mean((2, 3)), torch.full((len(images), 1), 0.05)], dim=1)

    def encode_text(self, texts):
        return torch.eye(4)[: len(texts)]


def test_levels_follow_the_fmgs_schedule():
    levels = pyramid_levels(200)
    assert [lv.tile for lv in levels] == [10, 25, 40, 55, 70, 85, 100]
    # stride ratio 1.0 at 0.05, 0.625 at 0.125 (interpolated), 0.5 from 0.15 on
    assert [lv.step for lv in levels] == [10, 16, 20, 28, 35, 42, 50]
    assert output_grid(200, 300) == (29, 43)  # spacing 10 - 3 = 7 px


def test_grid_normalisation_and_every_tile_encoded():
    fake = MeanColour()
    image = torch.rand(3, 200, 300)
    out = hybrid_feature_map(fake, image, batch_size=64, progress=False)
    assert out.shape == (4, 29, 43)
    torch.testing.assert_close(out.norm(dim=0), torch.ones(29, 43))
    expected = sum(((200 - lv.tile) // lv.step + 1) * ((300 - lv.tile) // lv.step + 1) for lv in pyramid_levels(200))
    assert fake.seen == expected


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_tile_feature_in_a_corner_shows_up_in_that_corner(corner):
    image = torch.zeros(3, 160, 240)
    patch = (slice(0, 24), slice(0, 24)) if corner == "top-left" else (slice(136, 160), slice(216, 240))
    image[0][patch] = 1.0  # a red square in one corner; everything else black
    out = hybrid_feature_map(MeanColour(), image, progress=False)
    red = out[0]
    gh, gw = red.shape
    r, c = divmod(int(red.argmax()), gw)
    if corner == "top-left":
        assert r < gh // 4 and c < gw // 4
        far = red[-1, -1]
    else:
        assert r >= 3 * gh // 4 and c >= 3 * gw // 4
        far = red[0, 0]
    assert red.max() > 0.9 and far < 0.05
    # the pyramid is an extractor in its own right, with its own cache key
    ex = PyramidExtractor(MeanColour(), progress=False)
    assert ex.key == "fake-mean-colour__fmgs-pyramid" and ex.encode_images(image[None]).shape == (1, 4, gh, gw)


def test_refuses_extractors_without_text():
    class NoText:
        key, dim, language_aligned = "x", 3, False

    with pytest.raises(ValueError, match="language-aligned"):
        PyramidExtractor(NoText())


def test_tile_input_sets_the_encoding_size_and_the_cache_key():
    class SizeProbe(MeanColour):
        input_size = 224

        def encode_pooled(self, images):
            self.sizes = getattr(self, "sizes", set()) | {tuple(images.shape[-2:])}
            return torch.cat([images.mean((2, 3)), torch.full((len(images), 1), 0.05)], dim=1)

    default, small = SizeProbe(), SizeProbe()
    image = torch.rand(1, 3, 40, 60)
    a = PyramidExtractor(default, progress=False).encode_images(image)
    b_ex = PyramidExtractor(small, progress=False, tile_input=16)
    b = b_ex.encode_images(image)
    assert default.sizes == {(224, 224)} and small.sizes == {(16, 16)}
    assert a.shape == b.shape and b_ex.key != PyramidExtractor(default).key and "in16" in b_ex.key
    # mean colour survives resizing, so the two maps agree: only the encoding size changed
    torch.testing.assert_close(a, b, atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="at least 8"):
        PyramidExtractor(default, tile_input=4)


def test_tile_input_without_the_pyramid_is_refused():
    from fmsplat.foundation import get_extractor

    with pytest.raises(ValueError, match="needs pyramid=True"):
        get_extractor("effnet", tile_input=64)
