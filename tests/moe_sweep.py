"""Every MoE model type of the installed transformers, shrunk to a tiny random-weight model and checked.

    python tests/moe_sweep.py afmoe            # one type: prints a JSON line {type, status, rule, detail}
    python tests/moe_sweep.py --all            # every type, two processes at a time, then the table

A type is found by its config: a ``PreTrainedConfig`` subclass (or one of its sub-configs) with an
expert-count field. Its config is shrunk field by field (hidden 32, 3 layers, 8 or 16 experts, per-layer lists
cut to the new depth, keeping one layer of each kind) unless ``tiny.py`` / ``tiny_vl.py`` have a hand-made one,
and the model is built from the transformers class the auto mappings name. ``sweep`` checks each type in its
own forked process (imports shared, address space capped). ``check`` then verifies, in fp32 and bf16,
against the model itself (torch hooks on the modules that consume the routing, not moehooks' own reading):

* ``moehooks.adapt`` finds the MoE blocks;
* recording counts what the experts consumed (for a block that transforms its router's choice before its
  experts, ``entry.use``: what the router returned);
* ``steer(beta=0)`` leaves the logits bit-identical;
* hard steering puts the listed expert into every token's consumed top-k (and, past a block's use, into what
  its experts consumed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.auto import configuration_auto, modeling_auto  # noqa: E402

EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
MEMORY_BYTES = 3 << 30
VOCAB = 96

_SIZES: dict[str, Any] = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2, head_dim=8, max_position_embeddings=128,
    shared_expert_intermediate_size=16, shared_intermediate_size=16, moe_shared_expert_intermediate_size=16,
    expert_ffn_hidden_size=16, ffn_hidden_size=48, intermediate_size_mlp=48, d_model=32, d_ff=48, d_kv=8,
    num_layers=3, num_decoder_layers=3, decoder_layers=2, encoder_layers=2, decoder_attention_heads=4,
    encoder_attention_heads=4, decoder_ffn_dim=48, encoder_ffn_dim=48, num_heads=4, n_heads=4,
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, qk_head_dim=16,
    linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
    linear_head_dim=8, linear_num_heads=4, index_head_dim=8, index_n_heads=2, index_topk=8,
    mamba_n_heads=4, mamba_num_heads=4, mamba_d_head=16, mamba_head_dim=8, mamba_d_state=8, ssm_state_size=8,
    mamba_chunk_size=8, chunk_size=8, mamba_dt_rank=4, mamba_n_groups=1, n_groups=1,
    first_k_dense_replace=1, num_dense_layers=1, sliding_window=16, attention_chunk_size=64,
    num_nextn_predict_layers=0, num_mtp_layers=0, router_hidden_size=16, moe_latent_size=16,
    depth=1, out_hidden_size=32, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
    num_experts_per_tok=2, moe_k=2, moe_topk=2, moe_top_k=2, top_k_experts=2,
    num_shared_experts=1, n_shared_experts=1, moe_num_shared_experts=1, text_hidden_size=32,
)
#: fields a type needs beyond the shrunk default to be an MoE model at all (Doge: ``is_moe``; 16 experts = 4² keys)
_OVERRIDES: dict[str, dict[str, Any]] = {"doge": dict(is_moe=True, num_experts=16)}
_GROUP_FIELDS = ("n_group", "num_expert_group", "num_group")
_TOP_K_FIELDS = ("num_experts_per_tok", "moe_k", "moe_topk", "moe_top_k", "top_k_experts")


def moe_model_types() -> list[str]:
    """Model types whose config declares an expert count, sorted."""
    found = []
    for model_type, name in configuration_auto.CONFIG_MAPPING_NAMES.items():
        cls = _config_class(model_type)
        if cls is not None and _has_experts(cls):
            found.append(model_type)
    return sorted(found)


def _has_experts(cls, depth: int = 0) -> bool:
    if any(f in _fields(cls) for f in EXPERT_FIELDS):
        return True
    subs = getattr(cls, "sub_configs", None) or {}
    return depth < 2 and any(isinstance(s, type) and _has_experts(s, depth + 1) for s in subs.values())


def _config_class(model_type: str):
    try:
        return configuration_auto.CONFIG_MAPPING[model_type]
    except Exception:
        return None


def _fields(cls) -> dict[str, Any]:
    """Field name -> default of a config class (dataclass fields in v5, else ``__init__`` parameters)."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items() if n not in ("self", "kwargs")}


def _shrink(cls, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor kwargs for a tiny ``cls`` config."""
    fields = _fields(cls)
    default = cls()
    layers_before = getattr(default, "num_hidden_layers", None)
    kwargs: dict[str, Any] = {k: v for k, v in _SIZES.items() if k in fields}
    for k in _TOP_K_FIELDS:  # never more experts per token than the model's own default (ZAYA: exactly 1)
        if k in kwargs and isinstance(getattr(default, k, None), int):
            kwargs[k] = min(kwargs[k], getattr(default, k))
    grouped = any(getattr(default, g, 1) not in (None, 1) for g in _GROUP_FIELDS)
    for field in EXPERT_FIELDS:
        if field in fields:
            kwargs[field] = 16 if grouped else 8
    if grouped:
        for g in _GROUP_FIELDS:
            if g in fields:
                kwargs[g] = 4
        if "topk_group" in fields:
            kwargs["topk_group"] = 2
        for k in _TOP_K_FIELDS:
            if k in fields:
                kwargs[k] = 4
    layers = kwargs.get("num_hidden_layers", 3)
    for name in fields:
        value = getattr(default, name, None)
        if isinstance(value, (list, tuple)) and layers_before and len(value) == layers_before and len(value) > layers:
            kwargs[name] = list(_pick_layers(value, layers))
    for name in ("text_config", "vision_config", "thinker_config", "talker_config", "audio_config"):
        sub = getattr(default, name, None)
        if isinstance(sub, transformers.PreTrainedConfig):
            kwargs[name] = type(sub)(**_shrink(type(sub))).to_dict()
    kwargs.update(overrides or {})
    return kwargs


def _pick_layers(values, layers: int) -> list:
    """The first ``layers`` entries, with every other distinct value of ``values`` swapped in (over a repeated
    entry) while there is room, so that a hybrid model keeps one layer of each kind."""
    head = list(values[:layers])
    for value in dict.fromkeys(values):
        if value in head:
            continue
        repeated = [i for i in range(len(head) - 1, -1, -1) if head.count(head[i]) > 1]
        if repeated:
            head[repeated[0]] = value
    return head


def tiny_config(model_type: str):
    """The tests' hand-made tiny config where ``tiny.py`` / ``tiny_vl.py`` have one, else the shrunk default."""
    from tiny import FAMILIES

    if model_type in FAMILIES:
        cfg_name, _, kwargs = FAMILIES[model_type]
        return getattr(transformers, cfg_name)(**kwargs)
    cls = _config_class(model_type)
    return cls(**_shrink(cls, _OVERRIDES.get(model_type)))


def model_class(model_type: str):
    for mapping in ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
                    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "MODEL_MAPPING_NAMES"):
        name = getattr(modeling_auto, mapping).get(model_type)
        if name:
            return getattr(transformers, name)
    raise LookupError(f"no model class for {model_type!r}")


def build(model_type: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """A seeded tiny random-weight model of ``model_type`` in ``dtype``, eval mode."""
    from tiny_vl import VL_FAMILIES, build_vl

    torch.manual_seed(seed)
    if model_type in VL_FAMILIES:
        model = build_vl(model_type, seed).to(dtype)
    else:
        model = model_class(model_type)(tiny_config(model_type)).eval().to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in list(model.named_buffers()) + list(model.named_parameters()):
            if name.endswith(("e_score_correction_bias", "expert_bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
            elif tensor.dim() == 2 and tensor.is_floating_point() and not tensor.any():  # zero-initialised gates
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
    return model


def _consumers(model: torch.nn.Module) -> dict[int, list[torch.Tensor]]:
    """Torch pre-hooks on every module whose forward takes ``(hidden, top_k_index, top_k_weights)``; they
    collect the indices each one consumed (keyed by ``id(module)``)."""
    seen: dict[int, list[torch.Tensor]] = {}
    handles = []
    for module in model.modules():
        try:
            names = list(inspect.signature(type(module).forward).parameters)[1:4]
        except (TypeError, ValueError):
            continue
        if len(names) == 3 and "ind" in names[1] and "weight" in names[2]:
            seen[id(module)] = []
            handles.append(module.register_forward_pre_hook(
                lambda m, a, k, key=id(module): seen[key].append((a[1] if len(a) > 1 else k[names[1]]).detach().clone()),
                with_kwargs=True))
    seen["handles"] = handles  # type: ignore[index]
    return seen


def _release(seen: dict) -> None:
    for h in seen.pop("handles"):
        h.remove()


def _run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if getattr(out, "logits", None) is not None else out[0]


def _router_watch(router: torch.nn.Module, outputs: dict[int, Any]):
    """A hook keeping the first output of a block without an experts module (``outputs[id(router)]``); for
    Doge, whose experts are embedding rows, the indices its ``down_embed`` consumed."""
    if type(router).__name__ == "DogeCDMoE":
        return router.down_embed.register_forward_pre_hook(lambda m, a: outputs.setdefault(id(router), a[0]))
    return router.register_forward_hook(lambda m, a, o: outputs.setdefault(id(router), o))


def _router_counts(router: torch.nn.Module, output: Any, experts: int) -> torch.Tensor:
    """Tokens per expert read from a router's own output, for blocks without an experts module: Llama-4's
    dense scores (non-zero at the chosen experts), JetMoE's dispatch plan (``expert_size``), Doge's consumed
    indices; and from a ``(logits, weights, indices)`` router's indices where the block transforms them."""
    if type(router).__name__ == "DogeCDMoE":
        return torch.bincount(output.reshape(-1), minlength=experts)
    if type(router).__name__ == "JetMoeTopKGating":
        return torch.tensor(output[3])
    if isinstance(output, tuple) and len(output) >= 3 and not output[2].is_floating_point():
        return torch.bincount(output[2].reshape(-1).long(), minlength=experts)
    return (output[0] > 0).sum(0)


def _observe(model: torch.nn.Module, routing, inputs: dict[str, torch.Tensor],
             *contexts) -> list[tuple[torch.Tensor, int, torch.Tensor | None]]:
    """Per routing entry, ``(tokens per expert, tokens routed, indices its experts consumed or None)`` the model
    really used in one forward inside ``contexts`` (a block that did not run, e.g. a vision-only router on text,
    counts zeros); a block with a ``use`` of its router's choice counts what its router returned."""
    seen = _consumers(model)
    outputs: dict[int, Any] = {}
    handles = [_router_watch(e.router, outputs) for e in routing.layers if e.experts is None or e.use]
    try:
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            _run(model, inputs)
    finally:
        _release(seen)
        for h in handles:
            h.remove()
    counts = []
    for e in routing.layers:
        consumed = seen[id(e.experts)][0] if e.experts is not None and seen[id(e.experts)] else None
        if consumed is not None and not e.use:
            counts.append((torch.bincount(consumed.reshape(-1).long(), minlength=e.num_experts), consumed.shape[0],
                           consumed))
        elif id(e.router) in outputs:
            output = outputs[id(e.router)]
            rows = output.shape[0] if isinstance(output, torch.Tensor) else output[-1].shape[0]
            counts.append((_router_counts(e.router, output, e.num_experts), int(rows), consumed))
        else:
            counts.append((torch.zeros(e.num_experts, dtype=torch.long), 0, None))
    return counts


def _inputs(model_type: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Text ids, or the tests' image+text batch for the vision-language builders (per-modality routers)."""
    from tiny_vl import VL_FAMILIES, vl_batch

    if model_type in VL_FAMILIES:
        batch = vl_batch(model, left_pad=False)
        return {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in batch.items()}
    return {"input_ids": torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))}


def check_dtype(model_type: str, dtype: torch.dtype) -> dict[str, Any]:
    """One dtype's verdict: adapt, recording vs what the model consumed, beta=0 identity, hard forcing."""
    import moehooks

    model = build(model_type, dtype)
    inputs = _inputs(model_type, model)
    try:
        reference = _run(model, inputs)
    except Exception as error:  # noqa: BLE001 - the model itself does not run in this dtype at this size
        return dict(status="model-fails",
                    detail=f"transformers {transformers.__version__}: {type(error).__name__}: {str(error)[:160]}")
    try:
        routing = moehooks.adapt(model)
    except moehooks.UnsupportedModelError as error:
        return dict(status="unsupported", detail=str(error)[:300])
    rules = sorted({e.adapter.name + (f"; block: {e.use}" if e.use else "") for e in routing.layers})
    recorder = moehooks.record(model)
    used = _observe(model, routing, inputs, recorder)
    counts = recorder.counts()
    for row, (entry, (expected, *_)) in enumerate(zip(routing.layers, used)):
        if not torch.equal(counts[row, : entry.num_experts].cpu(), expected.cpu()):
            return dict(status="fail", rule=rules, detail=f"recorded counts differ at {entry.name}")
    steerable = [e for e in routing.layers if not e.rule_error]
    if not steerable:
        return dict(status="record-only", rule=rules, detail=routing.layers[0].rule_error[:300])
    layers = sorted({e.layer for e in steerable})
    with moehooks.steer(model, {i: [0] for i in layers}, beta=0.0):
        if not torch.equal(_run(model, inputs), reference):
            return dict(status="fail", rule=rules, detail="beta=0 steering changed the logits")
    used = _observe(model, routing, inputs, moehooks.steer(model, {i: [1] for i in layers}, mode="hard"))
    for entry, (expected, rows, consumed) in zip(routing.layers, used):
        if entry in steerable and int(expected[1]) != rows:
            return dict(status="fail", rule=rules, detail=f"hard steering did not force expert 1 at {entry.name}")
        if entry in steerable and entry.use and not bool((consumed == 1).any(dim=-1).all()):
            return dict(status="fail", rule=rules, detail=f"forced expert 1 did not reach the experts at {entry.name}")
    status = "ok" if len(steerable) == len(routing.layers) else "partial"
    detail = "" if status == "ok" else next(e.rule_error for e in routing.layers if e.rule_error)[:300]
    return dict(status=status, rule=rules, detail=detail)


_RANK = {"ok": 0, "partial": 1, "record-only": 2, "model-fails": 3, "unsupported": 4, "fail": 5}


def check(model_type: str) -> dict[str, Any]:
    """The verdict of ``model_type`` over fp32 and bf16 (the worse of the two; bf16 may only fail to run).

    ``no-tiny-model``: no tiny model of this type could be built here (a harness limit, not a verdict).
    """
    start = time.time()
    try:
        build(model_type)
    except pytest.skip.Exception as skipped:  # a tiny_vl builder's known upstream breakage of this release
        return dict(type=model_type, status="model-fails", rule=[], detail=str(skipped)[:160])
    except Exception as error:  # noqa: BLE001 - the shrunk config is rejected, or the class is not loadable
        return dict(type=model_type, status="no-tiny-model", rule=[], detail=f"{type(error).__name__}: {str(error)[:160]}")
    verdicts = {}
    for dtype in (torch.float32, torch.bfloat16):
        try:
            verdicts[str(dtype).split(".")[-1]] = check_dtype(model_type, dtype)
        except Exception as error:  # noqa: BLE001 - reported, never hidden
            verdicts[str(dtype).split(".")[-1]] = dict(status="error", detail=f"{type(error).__name__}: {str(error)[:200]}")
    fp32, bf16 = verdicts["float32"], verdicts["bfloat16"]
    worst = fp32 if bf16["status"] == "model-fails" else max((fp32, bf16), key=lambda v: _RANK.get(v["status"], 9))
    return dict(type=model_type, status=worst["status"], rule=fp32.get("rule", []), detail=worst.get("detail", ""),
                bf16=bf16["status"], seconds=round(time.time() - start, 1))


def run_isolated(model_type: str, timeout: float = 240.0) -> dict[str, Any]:
    """``check`` in its own forked process (torch and transformers already imported), its address space capped
    at ``MEMORY_BYTES`` above what it inherits."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_isolated_check, args=(model_type, sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            return dict(type=model_type, status="timeout", rule=[], detail=f"over {timeout:.0f} s")
        return receiver.recv()
    except EOFError:
        process.join(10)
        return dict(type=model_type, status="crashed", rule=[], detail=f"exit code {process.exitcode}")
    finally:
        if process.is_alive():
            process.kill()
        process.join()


def _isolated_check(model_type: str, sender) -> None:
    inherited = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (inherited + MEMORY_BYTES, inherited + MEMORY_BYTES))
    torch.set_num_threads(1)
    sender.send(check(model_type))
    sender.close()


def sweep(types: list[str] | None = None, workers: int = 2) -> list[dict[str, Any]]:
    types = moe_model_types() if types is None else types
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_isolated, types))


def table(results: list[dict[str, Any]]) -> str:
    rows = [f"{'type':28} {'status':14} {'bf16':12} rule"]
    for r in results:
        rule = "; ".join(r.get("rule", [])) or r.get("detail", "")[:90]
        rows.append(f"{r['type']:28} {r['status']:14} {r.get('bf16', ''):12} {rule}")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:] == ["--all"]:
        print(table(sweep()))
    else:
        for name in sys.argv[1:]:
            print(json.dumps(check(name)), flush=True)
