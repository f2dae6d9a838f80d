"""Tiny random-weight multimodal MoE models of the real transformers classes, with valid image+text batches.

    model = build_vl("qwen3_vl_moe")
    batch = vl_batch(model)                       # kwargs for model(**batch) and model.generate(**batch)
    out = model(**batch, output_router_logits=True)
    mask = image_positions(model, batch)          # BoolTensor [batch, seq], True at image placeholder tokens

Every family here uses a tiny vocabulary (``tiny.VOCAB``); its special tokens live at the top of it and
ordinary text tokens are drawn from ``[3, TEXT_MAX)``. Row 0 of a batch is left padded when ``left_pad``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import transformers

from tiny import VOCAB, _randomise_biases, skip_if_forward_is_broken

TEXT_MAX = 80  # text tokens are drawn from [3, TEXT_MAX); special tokens sit in [TEXT_MAX, VOCAB)
PAD = 0
N_PAD = 2  # left-padding length of row 0
IMAGE_SIZE = 32  # square images, in pixels

# Special token ids (shared by all families, mapped onto each config's own attribute names).
IMAGE, VIDEO, IMG_START, IMG_END, VID_START, VID_END = 90, 91, 92, 93, 94, 95

_TXT = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD,
            bos_token_id=1, eos_token_id=2)


# ---------------------------------------------------------------------------------------------- builders

def _qwen3_vl_moe() -> torch.nn.Module:
    config = transformers.Qwen3VLMoeConfig(
        text_config=dict(_TXT, head_dim=8, num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, in_channels=3,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=IMG_START, vision_end_token_id=IMG_END,
        tie_word_embeddings=False,
    )
    return transformers.Qwen3VLMoeForConditionalGeneration(config)


def _glm4v_moe() -> torch.nn.Module:
    config = transformers.Glm4vMoeConfig(
        text_config=dict(_TXT, num_attention_heads=2, num_key_value_heads=1, n_routed_experts=16,
                         num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                         first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                          "mrope_section": [2, 1, 1]}),  # head_dim 16, rotary 8
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, patch_size=8,
                           image_size=IMAGE_SIZE, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                           in_channels=3),
        image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=IMG_START, image_end_token_id=IMG_END,
        video_start_token_id=VID_START, video_end_token_id=VID_END,
    )
    return transformers.Glm4vMoeForConditionalGeneration(config)


def _ernie4_5_vl_moe() -> torch.nn.Module:
    config = transformers.Ernie4_5_VLMoeConfig(
        text_config=dict(_TXT, num_attention_heads=2, num_key_value_heads=1, moe_intermediate_size=[16, 8],
                         moe_num_experts=8, moe_k=2, moe_num_shared_experts=1, mlp_layer_types=["dense", "sparse"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [3, 3, 2]}),  # head_dim 16: h + w + t = 8
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, patch_size=8,
                           spatial_merge_size=2, temporal_merge_size=2, in_channels=3),
        image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=IMG_START, image_end_token_id=IMG_END,
        video_start_token_id=VID_START, video_end_token_id=VID_END,
    )
    return transformers.Ernie4_5_VLMoeForConditionalGeneration(config)


def _llama4() -> torch.nn.Module:
    # the pixel-shuffle MLP's fc1 takes vision intermediate_size = vision_output_dim / pixel_shuffle_ratio**2
    config = transformers.Llama4Config(
        text_config=dict(_TXT, head_dim=8, intermediate_size_mlp=48, num_local_experts=8, num_experts_per_tok=1,
                         interleave_moe_layer_step=1, no_rope_layers=[1, 1], attention_chunk_size=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                           vision_output_dim=32, image_size=IMAGE_SIZE, patch_size=8, pixel_shuffle_ratio=0.5,
                           projector_input_dim=32, projector_output_dim=32),
        image_token_index=IMAGE, boi_token_index=IMG_START, eoi_token_index=IMG_END,
    )
    return transformers.Llama4ForConditionalGeneration(config)


_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "qwen3_vl_moe": _qwen3_vl_moe,
    "glm4v_moe": _glm4v_moe,
    "ernie4_5_vl_moe": _ernie4_5_vl_moe,
    "llama4": _llama4,
}
VL_FAMILIES = tuple(_BUILDERS)


def build_vl(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A seeded tiny multimodal model of the real class for ``model_type`` (eval mode, fp32)."""
    torch.manual_seed(seed)
    model = _BUILDERS[model_type]().eval()
    _randomise_biases(model)
    skip_if_forward_is_broken(model, vl_batch(model, batch_size=1))
    return model


# ---------------------------------------------------------------------------------------------- batches

def image_token_id(model: torch.nn.Module) -> int:
    """The id of the image placeholder token, read from the model's config."""
    cfg = model.config
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"{type(cfg).__name__} has no image token id")


def image_positions(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """BoolTensor [batch, seq]: True where ``input_ids`` holds the model's image placeholder token."""
    return batch["input_ids"] == image_token_id(model)


def _left_pad(rows: list[list[int]], types: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    tt = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, types)):
        ids[i, length - len(r):] = torch.tensor(r)
        tt[i, length - len(t):] = torch.tensor(t)
        mask[i, length - len(r):] = 1
    return ids, tt, mask


def _rows(batch_size: int, left_pad: bool, n_image: int, start: int, end: int, g: torch.Generator,
          prefix: int = 3, suffix: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``text start image*n end text``; row 0 is N_PAD tokens shorter (left padded) when ``left_pad``."""
    rows, types = [], []
    for b in range(batch_size):
        pre = prefix - (N_PAD if (left_pad and b == 0) else 0)
        pre_ids = torch.randint(3, TEXT_MAX, (pre,), generator=g).tolist()
        suf_ids = torch.randint(3, TEXT_MAX, (suffix,), generator=g).tolist()
        rows.append(pre_ids + [start] + [IMAGE] * n_image + [end] + suf_ids)
        types.append([0] * (pre + 1) + [1] * n_image + [0] * (1 + suffix))
    return _left_pad(rows, types)


def _qwen_like_batch(model: torch.nn.Module, batch_size: int, left_pad: bool, g: torch.Generator,
                     start: int, end: int) -> dict[str, Any]:
    """Qwen2-VL style vision input: flattened patches [N, C*T*P*P] plus ``image_grid_thw`` [images, 3]."""
    vc = model.config.vision_config
    grid = IMAGE_SIZE // vc.patch_size
    n_image = grid * grid // vc.spatial_merge_size**2
    ids, tt, mask = _rows(batch_size, left_pad, n_image, start, end, g)
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    pixel_values = torch.randn(batch_size * grid * grid, patch_dim, generator=g)
    image_grid_thw = torch.tensor([[1, grid, grid]] * batch_size)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                mm_token_type_ids=tt)


def _ernie_batch(model: torch.nn.Module, batch_size: int, left_pad: bool, g: torch.Generator) -> dict[str, Any]:
    """Ernie 4.5 VL: patches [N, C*P*P] (no temporal patch), ``image_grid_thw`` [images, 3], ``mm_token_type_ids``
    (1 at image tokens: M-RoPE) and ``moe_mm_token_type_ids`` (1 at image tokens *and* image start/end tokens:
    those rows go through ``vision_moe``, all others through ``text_moe``)."""
    vc = model.config.vision_config
    grid = IMAGE_SIZE // vc.patch_size
    n_image = grid * grid // vc.spatial_merge_size**2
    ids, tt, mask = _rows(batch_size, left_pad, n_image, IMG_START, IMG_END, g)
    pixel_values = torch.randn(batch_size * grid * grid, vc.in_channels * vc.patch_size**2, generator=g)
    image_grid_thw = torch.tensor([[1, grid, grid]] * batch_size)
    cfg = model.config
    moe_tt = ((ids == cfg.image_token_id) | (ids == cfg.image_start_token_id) | (ids == cfg.image_end_token_id)).long()
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                mm_token_type_ids=tt, moe_mm_token_type_ids=moe_tt)


def _llama4_batch(model: torch.nn.Module, batch_size: int, left_pad: bool, g: torch.Generator) -> dict[str, Any]:
    """Llama 4: one tile per image, pixel_values [images, C, H, W]; tokens per tile =
    (image_size / patch_size)^2 * pixel_shuffle_ratio^2."""
    vc = model.config.vision_config
    n_image = int((vc.image_size // vc.patch_size) ** 2 * vc.pixel_shuffle_ratio**2)
    ids, _, mask = _rows(batch_size, left_pad, n_image, model.config.boi_token_index, model.config.eoi_token_index, g)
    pixel_values = torch.randn(batch_size, vc.num_channels, vc.image_size, vc.image_size, generator=g)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values)


def vl_batch(model: torch.nn.Module, batch_size: int = 2, left_pad: bool = True, seed: int = 0) -> dict[str, Any]:
    """A valid image+text batch (one image per row) for ``model(**batch)`` and ``model.generate(**batch)``."""
    g = torch.Generator().manual_seed(seed)
    model_type = model.config.model_type
    if model_type in ("qwen3_vl_moe", "glm4v_moe"):
        return _qwen_like_batch(model, batch_size, left_pad, g, IMG_START, IMG_END)
    if model_type == "ernie4_5_vl_moe":
        return _ernie_batch(model, batch_size, left_pad, g)
    if model_type == "llama4":
        return _llama4_batch(model, batch_size, left_pad, g)
    raise KeyError(model_type)
