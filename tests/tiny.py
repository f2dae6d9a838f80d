"""Tiny random-weight models of the real transformers MoE classes, one builder per family.

    model = tiny_model("qwen3_moe")            # eval mode, seeded, fp32
    ids = torch.randint(0, VOCAB, (2, 6))
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

VOCAB = 96
_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    moe_intermediate_size=16,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_DEEPSEEK = dict(
    n_routed_experts=16,
    num_experts_per_tok=4,
    n_group=4,
    topk_group=2,
    n_shared_experts=1,
    first_k_dense_replace=1,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    kv_lora_rank=16,
    q_lora_rank=None,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
)
_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
_VISION = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, patch_size=8, spatial_merge_size=2,
               temporal_patch_size=2, out_hidden_size=32, in_channels=3)

_GROUPED = dict(n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                routed_scaling_factor=2.5, norm_topk_prob=True)
_MLA = dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
_LINEAR = dict(linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
               linear_num_value_heads=4)
_SPARSE3 = ["dense", "sparse", "sparse"]
_MLA_Q = dict(_MLA, q_lora_rank=16)  # families whose config requires an int q_lora_rank
_DSA = dict(_TEXT, **_GROUPED, **_MLA_Q, num_key_value_heads=4, mlp_layer_types=_SPARSE3, index_topk=8,
            index_head_dim=8, index_n_heads=2)  # MLA + sparse ("indexed") attention

# model_type -> (config class name, model class name, config kwargs)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(_TEXT, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=16,
                       norm_topk_prob=False)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(_TEXT, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(_TEXT, num_local_experts=8, num_experts_per_tok=2)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(_TEXT, num_experts=8, num_experts_per_tok=2)),
    "inkling_text": ("InklingTextConfig", "InklingForCausalLM",  # weights normalise with 2 shared experts' logits
                     dict(_TEXT, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2)),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                dict(_TEXT, num_local_experts=8, num_experts_per_tok=2, intermediate_size=16,
                     layer_types=["full_attention"] * 3)),
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM",
                    dict(_TEXT, num_local_experts=8, num_experts_per_tok=2, intermediate_size_mlp=48,
                         interleave_moe_layer_step=1, no_rope_layers=[1, 1, 1], attention_chunk_size=64)),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(_TEXT, **_DEEPSEEK, num_key_value_heads=4)),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM",
                 dict(_TEXT, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                      n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5)),
    # --- softmax -> top-k (-> renorm), like Qwen3MoeTopKRouter / MixtralTopKRouter
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM",
                   dict(_TEXT, **_LINEAR, num_experts=8, num_experts_per_tok=2, shared_expert_intermediate_size=16,
                        norm_topk_prob=True, layer_types=["linear_attention", "full_attention", "linear_attention"])),
    "qwen3_5_moe_text": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM",
                         dict(_TEXT, **_LINEAR, num_experts=8, num_experts_per_tok=2,
                              shared_expert_intermediate_size=16,
                              layer_types=["linear_attention", "full_attention", "linear_attention"])),
    "flex_olmo": ("FlexOlmoConfig", "FlexOlmoForCausalLM",
                  dict(_TEXT, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)),
    "mellum": ("MellumConfig", "MellumForCausalLM",
               dict(_TEXT, num_local_experts=8, num_experts_per_tok=2, norm_topk_prob=True, sliding_window=16)),
    "minimax": ("MiniMaxConfig", "MiniMaxForCausalLM",
                dict(_TEXT, num_local_experts=8, num_experts_per_tok=2, block_size=4,
                     layer_types=["linear_attention", "full_attention", "linear_attention"])),
    "jamba": ("JambaConfig", "JambaForCausalLM",
              dict(_TEXT, num_experts=8, num_experts_per_tok=2, expert_layer_period=1, expert_layer_offset=0,
                   attn_layer_period=2, attn_layer_offset=1, use_mamba_kernels=False, mamba_d_state=4,
                   mamba_dt_rank=4, mamba_expand=2)),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", "HunYuanMoEV1ForCausalLM",
                       dict(_TEXT, num_experts=8, moe_topk=2, num_shared_expert=1)),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", "Ernie4_5_MoeForCausalLM",
                     dict(_TEXT, moe_num_experts=8, moe_k=2, moe_num_shared_experts=1, moe_layer_start_index=1,
                          moe_layer_end_index=2, moe_layer_interval=1)),
    # --- top-k on logits -> softmax over the top-k, like GptOssTopKRouter
    "aria_text": ("AriaTextConfig", "AriaTextForCausalLM",
                  dict(_TEXT, moe_num_experts=8, moe_topk=2, moe_num_shared_experts=1)),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                   dict(_TEXT, num_local_experts=8, num_experts_per_tok=2, intermediate_size=16)),
    "granitemoeshared": ("GraniteMoeSharedConfig", "GraniteMoeSharedForCausalLM",
                         dict(_TEXT, num_local_experts=8, num_experts_per_tok=2, intermediate_size=16,
                              shared_intermediate_size=16)),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM",
                         dict(_TEXT, num_local_experts=8, num_experts_per_tok=2, intermediate_size=16,
                              shared_intermediate_size=16, mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=8,
                              mamba_d_head=16, mamba_chunk_size=8,
                              layer_types=["mamba", "attention", "mamba"])),
    "cohere2_moe": ("Cohere2MoeConfig", "Cohere2MoeForCausalLM",
                    dict(_TEXT, num_experts=8, num_experts_per_tok=2, expert_selection_fn="softmax",
                         sliding_window=16)),
    # --- sigmoid + e_score_correction_bias + group-limited top-k, like DeepseekV3TopkRouter
    "dots1": ("Dots1Config", "Dots1ForCausalLM",
              dict(_TEXT, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1,
                   first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True)),
    "glm4_moe_lite": ("Glm4MoeLiteConfig", "Glm4MoeLiteForCausalLM",
                      dict(_TEXT, **_GROUPED, **_MLA, num_key_value_heads=4, mlp_layer_types=_SPARSE3)),
    "exaone_moe": ("ExaoneMoeConfig", "ExaoneMoeForCausalLM",
                   dict(_TEXT, num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, num_shared_experts=1,
                        routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
                        sliding_window=16)),
    "solar_open": ("SolarOpenConfig", "SolarOpenForCausalLM", dict(_TEXT, **_GROUPED)),
    "kimi_linear": ("KimiLinearConfig", "KimiLinearForCausalLM",
                    dict(_TEXT, **_MLA, num_experts=16, num_experts_per_token=4, num_expert_group=4, topk_group=2,
                         num_shared_experts=1, routed_scaling_factor=2.5, moe_renormalize=True,
                         num_key_value_heads=4, linear_head_dim=8, linear_num_heads=4,
                         layer_types=["linear_attention", "full_attention", "linear_attention"],
                         mlp_layer_types=_SPARSE3)),
    "bailing_hybrid": ("BailingHybridConfig", "BailingHybridForCausalLM",
                       dict(_TEXT, **_MLA, num_experts=16, num_experts_per_token=4, num_expert_group=4, topk_group=2,
                            num_shared_experts=1, routed_scaling_factor=2.5, moe_renormalize=True,
                            num_key_value_heads=4, linear_head_dim=8, linear_num_heads=4, first_k_dense_replace=1,
                            num_nextn_predict_layers=0, layer_group_size=3)),
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM",
                   dict(_TEXT, **_GROUPED, moe_intermediate_size=16, moe_shared_expert_intermediate_size=16,
                        layers_block_type=["moe", "full_attention", "moe"], use_mamba_kernels=False,
                        ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=8, n_groups=1, chunk_size=8)),
    "axk1": ("AXK1Config", "AXK1ForCausalLM", dict(_TEXT, **_GROUPED, **_MLA_Q, num_key_value_heads=4)),
    "deepseek_v32": ("DeepseekV32Config", "DeepseekV32ForCausalLM", _DSA),
    "glm_moe_dsa": ("GlmMoeDsaConfig", "GlmMoeDsaForCausalLM", _DSA),
    "hy_v4": ("HYV4Config", "HYV4ForCausalLM", _DSA),
    "mimo_v2_flash": ("MiMoV2FlashConfig", "MiMoV2FlashForCausalLM",
                      dict(_TEXT, **_GROUPED, v_head_dim=8, sliding_window=16)),
    # --- softmax + group-limited top-k
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(_TEXT, **_MLA, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                         topk_method="group_limited_greedy", n_shared_experts=1, first_k_dense_replace=1,
                         routed_scaling_factor=1.0, num_key_value_heads=4)),
    "mistral4": ("Mistral4Config", "Mistral4ForCausalLM",
                 dict(_TEXT, **_GROUPED, **_MLA, num_key_value_heads=4, first_k_dense_replace=1,
                      head_dim=16)),  # head_dim = qk_nope + qk_rope (yarn rotary)
}
TEXT_FAMILIES = tuple(FAMILIES)


def build(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A seeded tiny model of the real class for ``model_type`` (eval mode, fp32)."""
    cfg_name, cls_name, kwargs = FAMILIES[model_type]
    torch.manual_seed(seed)
    config = getattr(transformers, cfg_name)(**kwargs)
    model = getattr(transformers, cls_name)(config).eval()
    _randomise_biases(model)
    skip_if_forward_is_broken(model, {"input_ids": torch.arange(3, 7).unsqueeze(0)})
    return model


def skip_if_forward_is_broken(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Skip, naming the release and the error, where the installed transformers cannot run this freshly built
    model's forward on ``inputs`` at all, before any hook exists, and the error is raised in transformers' own
    code (5.24: Llama-4's multimodal forward reads ``image_outputs`` the text model does not return; 5.25:
    NemotronH's ``DummyLayer`` has no ``get_seq_length``). Found by trying: a release where the forward runs is
    never skipped, and an error raised elsewhere (torch on a bad tiny config) fails the test."""
    try:
        with torch.no_grad():
            model(**inputs)
    except Exception as error:  # noqa: BLE001 - judged by where it was raised
        if not Path(traceback.extract_tb(error.__traceback__)[-1].filename).is_relative_to(_TRANSFORMERS):
            raise
        pytest.skip(f"transformers {transformers.__version__}: {type(model).__name__}.forward raises "
                    f"{type(error).__name__} ({error}); an upstream bug")


_TRANSFORMERS = Path(transformers.__file__).parent


def _randomise_biases(model: torch.nn.Module) -> None:
    """Give correction biases non-zero values so that biased selection is really exercised."""
    g = torch.Generator().manual_seed(1)
    for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
        if name.endswith("e_score_correction_bias"):
            with torch.no_grad():
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.05)


def decode_rows(sequences: torch.Tensor, prompt_len: int, eos: int = 2) -> int:
    """Hand count of the decode rows a ``generate`` routed: per output row, the new tokens up to and including
    its first ``eos`` (or all of them), less the last one, which no forward call reads."""
    total = 0
    for row in sequences[:, prompt_len:].tolist():
        ends = [i for i, token in enumerate(row) if token == eos]
        total += (ends[0] + 1 if ends else len(row)) - 1
    return total
