"""transformers extractors (CLIP, SigLIP, DINO, DINOv2).

Every model here is built from a tiny config with random weights: nothing is downloaded and the
numbers mean nothing semantically; the tests check wiring — shapes, patch-grid order, the joint
space, agreement with the model's own embedding functions — and the error when weights are missing.
"""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, SiglipConfig, SiglipModel, ViTConfig, ViTModel

from fmsplat.foundation import ModelUnavailableError, cosine_similarity, get_extractor
from fmsplat.foundation.hf import ClipExtractor, Dinov2Extractor, DinoExtractor, SiglipExtractor

VISION = dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=16, bos_token_id=1, pad_token_id=0)


class FakeTokenizer:
    """Deterministic ids from characters; tiny random models need no real vocabulary."""

    def __call__(self, texts, padding=True, truncation=True, return_tensors="pt"):
        length = 16 if padding == "max_length" else max(len(t) for t in texts) + 1
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            codes = [1 + ord(c) % 90 for c in t][: length - 1] + [98]  # 98 plays the end token
            ids[i, : len(codes)] = torch.tensor(codes)
            mask[i, : len(codes)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(TEXT, eos_token_id=98), vision_config=VISION, projection_dim=24)
    return CLIPModel(cfg).eval()


@pytest.fixture(scope="module")
def siglip_model():
    torch.manual_seed(1)
    return SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION)).eval()


def _reference_pixels(ex, x):
    mean = torch.tensor(ex.mean).view(1, 3, 1, 1)
    std = torch.tensor(ex.std).view(1, 3, 1, 1)
    return (x - mean) / std


def test_clip_dense_grid_order_and_joint_space(clip_model):
    ex = ClipExtractor(clip_model, name="tiny-clip", tokenizer=FakeTokenizer(), device="cpu")
    x = torch.rand(2, 3, 40, 56)  # multiples of the 8-px patch: no resize, 5 × 7 patches
    dense = ex.encode_images(x)
    assert dense.shape == (2, 24, 5, 7) and ex.dim == 24 and ex.grid_size(40, 56) == (5, 7)
    with torch.no_grad():
        vis = clip_model.vision_model(pixel_values=_reference_pixels(ex, x), interpolate_pos_encoding=True)
        ref = clip_model.visual_projection(clip_model.vision_model.post_layernorm(vis.last_hidden_state[:, 1:]))
    # token 1 + r·7 + c is patch (r, c): row-major, not transposed
    torch.testing.assert_close(dense[1, :, 3, 5], ref[1, 3 * 7 + 5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), ref, atol=1e-5, rtol=1e-4)
    # other sizes round to the nearest patch count; channels-last input is accepted
    assert ex.encode_images(torch.rand(1, 45, 30, 3)).shape == (1, 24, 6, 4)

    # pooled embedding == the model's own get_image_features of the image at its input size
    img = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        own = clip_model.get_image_features(pixel_values=_reference_pixels(ex, img)).pooler_output
    torch.testing.assert_close(ex.encode_pooled(img), own, atol=1e-5, rtol=1e-4)

    # text lands in the same 24-d space and equals the model's own text features
    text = ex.encode_text(["a cat", "a rocket"])
    assert text.shape == (2, 24)
    with torch.no_grad():
        own_text = clip_model.get_text_features(**FakeTokenizer()(["a cat", "a rocket"])).pooler_output
    torch.testing.assert_close(text, own_text)
    sim = cosine_similarity(dense, text)
    assert sim.shape == (2, 2, 5, 7) and float(sim.abs().max()) <= 1 + 1e-5


def test_clip_maskclip_uses_last_block_values(clip_model):
    ex = ClipExtractor(clip_model, name="tiny-clip", mode="maskclip", device="cpu")
    x = torch.rand(1, 3, 32, 48)
    dense = ex.encode_images(x)
    vm = clip_model.vision_model
    with torch.no_grad():
        hidden = vm(pixel_values=_reference_pixels(ex, x), interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        block = vm.encoder.layers[-1]
        values = block.self_attn.out_proj(block.self_attn.v_proj(block.layer_norm1(hidden[-2])))
        ref = clip_model.visual_projection(vm.post_layernorm(values[:, 1:]))
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), ref, atol=1e-5, rtol=1e-4)
    proj = ClipExtractor(clip_model, name="tiny-clip", device="cpu")
    assert proj.key != ex.key and not torch.allclose(proj.encode_images(x), dense)


def test_siglip_head_per_token_and_pooled(siglip_model):
    ex = SiglipExtractor(siglip_model, name="tiny-siglip", tokenizer=FakeTokenizer(), device="cpu")
    x = torch.rand(2, 3, 32, 40)
    dense = ex.encode_images(x)
    assert dense.shape == (2, 32, 4, 5)
    # with one token the real attention-pooling head returns exactly the per-token path
    tokens = torch.randn(3, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(ex._head_per_token(tokens)[:, 0], siglip_model.vision_model.head(tokens), atol=1e-5, rtol=1e-4)
    img = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        own = siglip_model.get_image_features(pixel_values=_reference_pixels(ex, img)).pooler_output
    torch.testing.assert_close(ex.encode_pooled(img), own, atol=1e-5, rtol=1e-4)
    text = ex.encode_text(["a duck"])
    assert text.shape == (1, 32) == (1, ex.dim)
    masked = SiglipExtractor(siglip_model, name="tiny-siglip", mode="maskclip", device="cpu").encode_images(x)
    assert masked.shape == dense.shape and not torch.allclose(masked, dense)


def test_dino_last_layer_keys_from_a_local_directory(tmp_path):
    torch.manual_seed(2)
    model = ViTModel(ViTConfig(**VISION), add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path / "tiny-dino")
    ex = get_extractor(f"dino:{tmp_path / 'tiny-dino'}", device="cpu")
    assert isinstance(ex, DinoExtractor) and not ex.language_aligned
    x = torch.rand(1, 3, 24, 40)
    dense = ex.encode_images(x)
    assert dense.shape == (1, 32, 3, 5)
    with torch.no_grad():
        hidden = model(pixel_values=_reference_pixels(ex, x), interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        block = model.layers[-1] if hasattr(model, "layers") else model.encoder.layer[-1]
        keys = block.attention.k_proj(block.layernorm_before(hidden[-2]))[:, 1:]
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), keys, atol=1e-5, rtol=1e-4)


def test_dinov2_patch_tokens():
    torch.manual_seed(3)
    model = Dinov2Model(Dinov2Config(**dict(VISION, patch_size=4))).eval()
    ex = Dinov2Extractor(model, name="tiny-dinov2", device="cpu")
    x = torch.rand(2, 3, 20, 28)
    dense = ex.encode_images(x)
    assert dense.shape == (2, 32, 5, 7)
    with torch.no_grad():
        ref = model(pixel_values=_reference_pixels(ex, x)).last_hidden_state[:, 1:]
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), ref, atol=1e-5, rtol=1e-4)


def test_missing_weights_give_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailableError) as err:
        get_extractor("clip:fmsplat-test/no-such-model", offline=True)
    msg = str(err.value)
    assert "fmsplat-test/no-such-model" in msg and "local directory" in msg and "huggingface-cli download" in msg
    missing = tmp_path / "models" / "clip-b16"
    with pytest.raises(ModelUnavailableError, match=f"local directory {missing} does not exist"):
        get_extractor(f"siglip:{missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match="dinov2 model .*empty.*huggingface-cli download"):
        get_extractor(f"dinov2:{empty}")
