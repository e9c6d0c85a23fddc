"""FMGS hybrid multi-scale feature map for any language-aligned extractor.

A pooled image embedding describes a whole crop, so FMGS builds dense supervision from tiles:

- 7 tile sizes, ``linspace(0.05, 0.5, 7) × image height`` (pixels, rounded);
- tiles laid out with a stride of ``ratio × tile size``, where the ratio falls linearly from 1.0 to
  0.5 as the tile ratio goes from 0.05 to 0.15 and stays 0.5 above (small tiles do not overlap,
  large ones overlap by half);
- each tile is resized to the model's input size and encoded (`encode_pooled`);
- every level's tile embeddings (a coarse map of tile centres) are sampled bilinearly onto one
  grid whose spacing is the level-0 stride minus 3 px, averaged over levels and L2-normalised.

`hybrid_feature_map` does one image; `PyramidExtractor` wraps an extractor so the pyramid is just
another extractor (own cache key, same text encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmsplat.foundation.base import safe_key, to_bchw

TILE_RATIOS = tuple(float(r) for r in np.linspace(0.05, 0.5, 7))
GRID_SHRINK_PX = 3


def stride_ratio(tile_ratio: float) -> float:
    """Tile stride / tile size: 1.0 at tile ratio 0.05, linearly down to 0.5 at 0.15, then 0.5."""
    return float(np.interp(tile_ratio, [0.05, 0.15], [1.0, 0.5]))


@dataclass(frozen=True)
class Level:
    tile_ratio: float
    tile: int  # tile side in pixels
    step: int  # stride between tile origins in pixels


def pyramid_levels(height: int) -> list[Level]:
    levels = []
    for r in TILE_RATIOS:
        tile = max(1, round(r * height))
        levels.append(Level(r, tile, max(1, round(tile * stride_ratio(r)))))
    return levels


def grid_spacing(height: int) -> int:
    return max(1, pyramid_levels(height)[0].step - GRID_SHRINK_PX)


def output_grid(height: int, width: int) -> tuple[int, int]:
    g = grid_spacing(height)
    return math.ceil(height / g), math.ceil(width / g)


def _tiles(image: torch.Tensor, level: Level) -> tuple[torch.Tensor, int, int]:
    """(3, H, W) -> (ny·nx, 3, tile, tile) crops, row-major, and the counts ny, nx."""
    t = min(level.tile, image.shape[-2], image.shape[-1])
    crops = image.unfold(1, t, level.step).unfold(2, t, level.step)  # (3, ny, nx, t, t)
    ny, nx = crops.shape[1:3]
    return crops.permute(1, 2, 0, 3, 4).reshape(ny * nx, 3, t, t), ny, nx


def _sample_level(tile_map: torch.Tensor, level: Level, tile: int, height: int, width: int) -> torch.Tensor:
    """Bilinear sample of a (D, ny, nx) tile-centre map at the output grid's points -> (D, gh, gw)."""
    g = grid_spacing(height)
    gh, gw = output_grid(height, width)
    ny, nx = tile_map.shape[-2:]

    def axis(n_points: int, n_tiles: int) -> torch.Tensor:
        points = (torch.arange(n_points, dtype=torch.float32) + 0.5) * g
        first = tile / 2.0
        span = (n_tiles - 1) * level.step
        if span == 0:
            return torch.zeros(n_points)
        return ((points - first) / span * 2 - 1).clamp(-1, 1)  # outside the centres: nearest edge tile

    ys, xs = axis(gh, ny), axis(gw, nx)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, gh, gw, 2) as (x, y)
    return F.grid_sample(tile_map[None], grid, mode="bilinear", align_corners=True)[0]


@torch.no_grad()
def hybrid_feature_map(extractor, image, batch_size: int = 32, progress: bool = True, input_size: int | None = None) -> torch.Tensor:
    """(D, gh, gw) unit-norm FMGS hybrid map of one float image in [0, 1] ((3,H,W) or (H,W,3))."""
    from tqdm.auto import tqdm

    if not getattr(extractor, "language_aligned", False):
        raise ValueError(f"the FMGS pyramid needs a language-aligned extractor; '{extractor.key}' is not")
    img = to_bchw(image)
    if img.shape[0] != 1:
        raise ValueError(f"hybrid_feature_map takes one image, got a batch of {img.shape[0]}")
    img = img[0]
    height, width = img.shape[-2:]
    size = int(input_size or getattr(extractor, "input_size", 224))
    levels = pyramid_levels(height)
    per_level = [_tiles(img, lv) for lv in levels]
    total = sum(len(c) for c, _, _ in per_level)
    acc = None
    with tqdm(total=total, desc="pyramid tiles", unit="tile", disable=not progress, leave=False) as bar:
        for level, (crops, ny, nx) in zip(levels, per_level):
            embs = []
            for i in range(0, len(crops), batch_size):
                batch = F.interpolate(crops[i : i + batch_size], size=(size, size), mode="bilinear", align_corners=False,
                                      antialias=crops.shape[-1] > size)
                embs.append(extractor.encode_pooled(batch.clamp(0, 1)).float())
                bar.update(len(batch))
            tile_map = torch.cat(embs).T.reshape(-1, ny, nx)
            sampled = _sample_level(tile_map, level, crops.shape[-1], height, width)
            acc = sampled if acc is None else acc + sampled
    return F.normalize(acc / len(levels), dim=0)


class PyramidExtractor:
    """Any language-aligned extractor seen through the FMGS hybrid pyramid (dense map, same text space)."""

    language_aligned = True

    def __init__(self, base, batch_size: int = 32, progress: bool = True, tile_input: int | None = None) -> None:
        if not getattr(base, "language_aligned", False):
            raise ValueError(f"the FMGS pyramid needs a language-aligned extractor; '{base.key}' is not")
        if tile_input is not None and int(tile_input) < 8:
            raise ValueError(f"pyramid tile_input must be at least 8 pixels, got {tile_input}")
        self.base = base
        self.dim = base.dim
        self.batch_size = batch_size
        self.progress = progress
        # tiles are encoded at the model's own input size (224 for CLIP and effnet: the paper), or at
        # tile_input: most tiles are small (520 of 919 on a 320x240 view are 12 px), and upsampling each
        # to 224 makes the pyramid cost ~900 full forward passes per view
        self.tile_input = int(tile_input) if tile_input else None
        self.key = safe_key(base.key, "fmgs-pyramid", *([f"in{self.tile_input}"] if self.tile_input else []))

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return output_grid(height, width)

    def encode_images(self, images) -> torch.Tensor:
        x = to_bchw(images)
        return torch.stack([hybrid_feature_map(self.base, im, self.batch_size, self.progress, self.tile_input) for im in x])

    def encode_text(self, texts):
        return self.base.encode_text(texts)

    def encode_pooled(self, images):
        return self.base.encode_pooled(images)
