"""Performance properties of the hooks: no host synchronisation, no recompilation, bounded memory.

* Host syncs: a ``TorchDispatchMode`` plus a ``TorchFunctionMode`` count every op that would make the host wait
  for a CUDA device (``.item()``, ``nonzero``, boolean indexing, ``.tolist()``, ``.cpu()``, ...). On the CPU
  nothing waits, so the test counts the ops themselves: recorded / steered / swapped ``generate`` must run
  exactly the ones unhooked ``generate`` runs.
* Compilation: ``torch.compile`` (backend ``eager``: guards and recompiles are decided by dynamo, before any
  backend) of the decode step through ``generate(cache_implementation="static")`` and of ``model.forward``
  with a dynamic cache; hooks must add no compilation per decode step.
* Memory: what a recorder retains does not grow with the number of generated tokens.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import transformers
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import moehooks
from tiny import VOCAB, build

aten = torch.ops.aten
_SYNC_OPS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.nonzero, aten.masked_select,
             aten._unique2, aten.unique_consecutive, aten.unique_dim, aten.bincount}
_INDEX_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
_HOST_METHODS = {"tolist", "numpy", "cpu", "item"}


def _packet(func: Any) -> Any:
    return getattr(func, "overloadpacket", func)


class SyncCounter(TorchDispatchMode):
    """Counts, by op name, the ops that would synchronise the host with a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = _packet(func)
        if packet in _SYNC_OPS:
            self.ops[str(packet)] += 1
        elif packet in _INDEX_OPS and _has_bool_index(args):
            self.ops[f"{packet} (boolean)"] += 1
        elif packet is aten.repeat_interleave and (kwargs or {}).get("output_size") is None:
            self.ops[str(packet)] += 1  # tensor repeats (int repeats decompose before reaching the mode)
        return func(*args, **(kwargs or {}))


class HostCopyCounter(TorchFunctionMode):
    """Counts explicit host transfers (``.tolist()``, ``.numpy()``, ``.cpu()``, ``.item()``)."""

    def __init__(self, ops: Counter[str]) -> None:
        super().__init__()
        self.ops = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _HOST_METHODS:
            self.ops[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def count_syncs(run: Callable[[], Any]) -> Counter[str]:
    """The would-be host syncs of ``run()``, by op."""
    counter = SyncCounter()
    with HostCopyCounter(counter.ops), counter:
        run()
    return counter.ops


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _generate(model: torch.nn.Module, new_tokens: int = 6, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model.generate(**_inputs(), max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0, eos_token_id=None, **kwargs)


def _swap(model: torch.nn.Module) -> moehooks.Swap:
    source, target = torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    return moehooks.swap(model, 1, source, target, 1.0, positions=_inputs()["attention_mask"].bool())


def _all_three(model: torch.nn.Module) -> ExitStack:
    stack = ExitStack()
    stack.enter_context(moehooks.record(model, per_sample=True))
    stack.enter_context(moehooks.steer(model, {1: [3], 2: [5]}, mode="hard"))
    stack.enter_context(_swap(model))
    return stack


CONTEXTS: dict[str, Callable[[torch.nn.Module], Any]] = {
    "record": lambda m: moehooks.record(m),
    "record per_sample": lambda m: moehooks.record(m, per_sample=True),
    "soft": lambda m: moehooks.steer(m, {1: [3, 4], 2: [5]}),
    "soft text tokens, decode": lambda m: moehooks.steer(m, {1: [3]}, tokens="text", phase="decode"),
    "hard": lambda m: moehooks.steer(m, {1: [3, 4], 2: [5]}, mode="hard"),
    "random": lambda m: moehooks.steer(m, {1: [3, 4]}, mode="random", seed=0),
    "calibrated sigma": lambda m: moehooks.steer(m, {1: [3]}, sigma={1: 0.7}),
    "swap": _swap,
    "record+steer+swap": _all_three,
}


# ---- host syncs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
@pytest.mark.parametrize("name", CONTEXTS)
def test_hooked_generate_adds_no_host_sync(family: str, name: str) -> None:
    model = build(family)
    unhooked = count_syncs(lambda: _generate(model))
    with CONTEXTS[name](model):  # opened outside the counter: argument checks may read values
        hooked = count_syncs(lambda: _generate(model))
    assert hooked == unhooked


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_traced_generate_adds_no_host_sync_within_a_chunk(family: str, tmp_path: Path) -> None:
    """A trace keeps its rows and their columns (sample, position, token...) on the device until a chunk is full:
    a run shorter than a chunk reads nothing back; the rows are on disk once the context closes."""
    from moehooks.trace import read_trace

    model = build(family)
    unhooked = count_syncs(lambda: _generate(model))
    with moehooks.record(model, trace=tmp_path / "t", trace_chunk=1 << 16):
        hooked = count_syncs(lambda: _generate(model))
    assert hooked == unhooked
    assert read_trace(tmp_path / "t")["layer0.position"].numel() == 18 + 3 * 5  # real prompt tokens + read tokens


def test_the_counter_sees_a_syncing_hook() -> None:
    model = build("qwen3_moe")
    unhooked = count_syncs(lambda: _generate(model, new_tokens=3))
    gate = model.model.layers[1].mlp.gate

    def syncing(module: torch.nn.Module, args: tuple, output: tuple) -> None:
        logits = output[0]
        logits[logits.argmax(-1) == 0].tolist()  # boolean index + host copy
        float(logits.std())  # .item()

    handle = gate.register_forward_hook(syncing)
    try:
        hooked = count_syncs(lambda: _generate(model, new_tokens=3))
    finally:
        handle.remove()
    calls = 3  # prefill + 2 decode steps
    assert hooked - unhooked == Counter({"aten.index (boolean)": calls, "Tensor.tolist": calls,
                                         "aten._local_scalar_dense": calls})


# ---- compilation ------------------------------------------------------------------------------------------
def _graphs() -> int:
    """Graphs dynamo has compiled in this process (first compilations and recompilations)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _compile_static_decode(model: torch.nn.Module) -> None:
    """Make ``generate(cache_implementation="static")`` compile the decode step (also on the CPU)."""
    config = transformers.CompileConfig(fullgraph=True, dynamic=False, backend="eager")
    config._compile_all_devices = True
    model.generation_config.compile_config = config


def _compile_forward(model: torch.nn.Module) -> None:
    model.forward = torch.compile(model.forward, dynamic=True, backend="eager")


def _logits(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    """The logits of every greedy step ``[steps, batch, vocab]`` (they decide the tokens)."""
    return torch.stack(_generate(model, output_logits=True, return_dict_in_generate=True, **kwargs).logits)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of a differently fused computation."""
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _check_compiled_generate(name: str, compile_model: Callable[[torch.nn.Module], None], **kwargs: Any) -> int:
    """Compiled ``generate`` without, with (three calls) and again without the ``name`` context gives the eager
    results, and the third hooked call compiles nothing. Returns the graphs compiled by the first two calls."""
    model = build("qwen3_moe")
    plain = _logits(model, **kwargs)
    with CONTEXTS[name](model) as ctx:
        hooked = _logits(model, **kwargs)
    eager_counts = ctx.counts() if name == "record" else None
    assert name == "record" or not _close(hooked, plain)  # the hooks change the run
    torch._dynamo.reset()
    compile_model(model)
    before = _graphs()
    assert _close(_logits(model, **kwargs), plain) and _graphs() > before
    before = _graphs()
    with CONTEXTS[name](model) as ctx:
        runs = [_logits(model, **kwargs) for _ in range(2)]  # compiled anew: the hooks run in the compiled code
        graphs = _graphs() - before
        with torch._dynamo.config.patch(error_on_recompile=True):
            runs.append(_logits(model, **kwargs))
    assert all(_close(logits, hooked) for logits in runs)
    if name == "record":
        assert torch.equal(ctx.counts(), 3 * eager_counts)
    assert _close(_logits(model, **kwargs), plain)  # compiled code with the hooks is gone too
    return graphs


@pytest.mark.parametrize("name", ["record", "soft", "record+steer+swap"])
def test_static_cache_compiled_decode_compiles_once_per_context(name: str) -> None:
    graphs = _check_compiled_generate(name, _compile_static_decode, cache_implementation="static")
    assert graphs == 1  # the decode step, once for all steps (the tracker's pre-hook stays eager)


@pytest.mark.slow
def test_compiled_forward_with_dynamic_cache_compiles_once_per_shape() -> None:
    graphs = _check_compiled_generate("record", _compile_forward)
    # prefill, the dynamic-shape decode step, and the prefill once more after the first call filled the hooks'
    # lazily built state (recorder tables, per-device constants); decode steps never recompile
    assert graphs == 3


def test_compiled_routing_function_is_compiled_once() -> None:
    model = build("qwen3_moe")
    experts = {0: [1], 1: [3], 2: [5]}
    torch._dynamo.reset()
    with moehooks.steer(model, experts, compile=True):
        compiled_ids = _generate(model, new_tokens=4)
    compiled = _graphs()
    with moehooks.steer(model, experts), torch._dynamo.config.patch(error_on_recompile=True):
        eager_ids = _generate(model, new_tokens=4)
    with moehooks.steer(model, experts, compile=True), torch._dynamo.config.patch(error_on_recompile=True):
        again = _generate(model, new_tokens=8)  # a new context, other token counts
    assert torch.equal(compiled_ids, eager_ids) and torch.equal(again[:, : eager_ids.shape[1]], eager_ids)
    assert _graphs() == compiled


# ---- memory -----------------------------------------------------------------------------------------------
def _retained(obj: Any) -> tuple[int, int]:
    """``(tensors, bytes)`` reachable from ``obj`` through attributes and containers (modules excluded)."""
    seen: set[int] = set()
    tensors, size = 0, 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or item is None or isinstance(item, (str, bytes, int, float, bool, torch.nn.Module)):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            tensors, size = tensors + 1, size + item.untyped_storage().nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
        elif hasattr(item, "__dict__"):  # objects and dataclasses
            stack.extend(vars(item).values())
    return tensors, size


@pytest.mark.parametrize("per_sample", [False, True])
def test_recorder_memory_does_not_grow_with_generated_tokens(per_sample: bool) -> None:
    model = build("qwen3_moe")
    retained = {}
    for new_tokens in (8, 64):
        with moehooks.record(model, per_sample=per_sample) as rec:
            _generate(model, new_tokens=new_tokens)
            inside = _retained(rec)  # tables plus the tracker's description of the last forward call
        retained[new_tokens] = (inside, _retained(rec))
        assert int(rec.tokens(phase="decode")[0]) == 3 * (new_tokens - 1)
    assert retained[8] == retained[64]
    routers, experts = len(rec.layers), rec.num_experts
    cells = 4 + 1 + (3 * 2 + 1 if per_sample else 0)  # (phase, modality) cells, (sample, modality) rows, +1 unused slot each
    tables = 3 * routers * (2 if per_sample else 1)  # counts, gates, probs (token totals are counts / top-k)
    assert retained[64][1] == (tables, routers * cells * experts * (8 + 4 + 4))
