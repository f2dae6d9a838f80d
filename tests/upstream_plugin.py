"""pytest plugin: every ``generate`` of a test run runs twice, unhooked and inside moehooks, compared bit for bit.

    PYTHONPATH=tests python -m pytest -p upstream_plugin \\
        /path/to/transformers/tests/models/qwen3_moe/test_modeling_qwen3_moe.py -k generate \\
        --moehooks-report upstream.jsonl

(``make test-upstream TRANSFORMERS_TESTS=...`` runs it on the MoE families' own model tests.)
Each ``GenerationMixin.generate`` call runs first unhooked on copies of its inputs, then with the same random
state inside ``moehooks.record(model)`` and ``moehooks.steer(model, {every MoE layer: [0]}, mode="soft",
beta=0)``; the test gets the hooked result. The call fails the test when the two results differ in any bit
(sequences, scores, logits, cache, ...: the first differing value is named), when only one of them raises,
when the hooks drew random numbers, or when the recording is not sane: every MoE layer routed the same tokens,
each with its top-k experts, and the prompt's real tokens (attention mask) count once as prefill. A call that
moehooks refuses (``UnsupportedModelError``, or a ``ValueError`` raised inside moehooks naming what it cannot
describe) gets the unhooked result, and the test, if it passes, is reported as xfailed with that reason.
``--moehooks-report FILE`` appends one JSON line per test: outcome, calls compared, refusals, differences.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import moehooks

_MOEHOOKS_DIR = os.path.dirname(os.path.abspath(moehooks.__file__))
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class Calls:
    """What the wrapped ``generate`` saw during one test."""

    compared: int = 0
    refusals: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)


def default_hooks(model: nn.Module) -> contextlib.AbstractContextManager[moehooks.Recorder]:
    """``record(model)`` and ``steer(model, expert 0 on every MoE layer, mode="soft", beta=0)``; yields the
    recorder."""
    stack = contextlib.ExitStack()
    routing = moehooks.adapt(model)
    rec = stack.enter_context(moehooks.record(model))
    stack.enter_context(moehooks.steer(model, {layer: [0] for layer in routing.layer_ids}, mode="soft", beta=0))
    return _yielding(stack, rec)


@contextlib.contextmanager
def _yielding(stack: contextlib.ExitStack, value: Any) -> Iterator[Any]:
    with stack:
        yield value


def refusal(exc: BaseException) -> str | None:
    """The reason when ``exc`` is moehooks declining a call it cannot describe, else None."""
    if isinstance(exc, moehooks.UnsupportedModelError):
        return f"UnsupportedModelError: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, ValueError) and frames and os.path.abspath(frames[-1].filename).startswith(_MOEHOOKS_DIR):
        return f"{type(exc).__name__}: {exc}"
    return None


def first_difference(a: Any, b: Any, path: str = "output", depth: int = 0) -> str | None:
    """Where ``a`` and ``b`` first differ in any bit (``path[index]: a vs b``), or None when they are identical.
    Walks tensors, mappings (model outputs), sequences and transformers' cache objects."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path}: {type(a).__name__} vs {type(b).__name__}"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        a, b = a.detach().cpu(), b.detach().cpu()
        bits = _BITS.get(a.element_size()) if a.is_floating_point() or a.is_complex() else None
        same = a.view(bits) == b.view(bits) if bits is not None else a == b
        if bool(same.all()):
            return None
        where = tuple(int(i) for i in (~same).nonzero()[0])
        return f"{path}[{', '.join(map(str, where))}]: {a[where].tolist()} vs {b[where].tolist()}"
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if depth > 8:
        return None
    if isinstance(a, Mapping):
        if list(a.keys()) != list(b.keys()):
            return f"{path}: keys {list(a.keys())} vs {list(b.keys())}"
        pairs = [(f"{path}.{k}", a[k], b[k]) for k in a]
    elif isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        pairs = [(f"{path}[{i}]", x, y) for i, (x, y) in enumerate(zip(a, b))]
    elif type(a).__module__.startswith("transformers.cache_utils"):
        return first_difference(vars(a), vars(b), f"{path}<{type(a).__name__}>", depth + 1)
    elif isinstance(a, (int, float, str, bool, type(None))):
        both_nan = isinstance(a, float) and math.isnan(a) and math.isnan(b)
        return None if a == b or both_nan else f"{path}: {a!r} vs {b!r}"
    else:
        return None
    for where, x, y in pairs:
        found = first_difference(x, y, where, depth + 1)
        if found:
            return found
    return None


def _copy(value: Any) -> Any:
    """A copy of a ``generate`` argument for the reference run: tensors and caches copied, models shared."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_copy(v) for v in value)
    try:
        return copy.deepcopy(value)
    except Exception:  # an object that cannot be copied (a lock, a generator) is shared
        return value


def _configs(model: nn.Module, args: tuple, kwargs: dict) -> list[tuple[nn.Module, Any]]:
    """(module, a copy of its generation config) of the model and of every model passed to ``generate``
    (assisted decoding adapts its assistant's config in place)."""
    modules = [model] + [v for v in (*args, *kwargs.values()) if isinstance(v, nn.Module)]
    return [(m, copy.deepcopy(m.generation_config)) for m in modules if getattr(m, "generation_config", None)]


def _restore(configs: list[tuple[nn.Module, Any]]) -> None:
    for module, config in configs:
        module.generation_config = copy.deepcopy(config)


def _rng() -> list[torch.Tensor]:
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return states


def _set_rng(states: list[torch.Tensor]) -> None:
    torch.random.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state_all(states[1:])


def _prompt_tokens(model: nn.Module, args: tuple, kwargs: dict) -> int | None:
    """Real prompt tokens of a ``generate`` call, or None when the prompt is not plain token ids/embeddings or
    the call continues from a cache. Without a 2-D attention mask, generate's own rule: token ids holding the
    padding id (when it is not an end-of-sequence id) are masked there, else every position is real."""
    if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
        return None
    ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if not isinstance(ids, torch.Tensor) or ids.dim() < 2:
        return None
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == ids.shape[:2]:
        return int(mask.sum())
    config = kwargs.get("generation_config") or model.generation_config
    pad = kwargs.get("pad_token_id", config.pad_token_id)
    eos = kwargs.get("eos_token_id", config.eos_token_id)
    eos = eos if isinstance(eos, (list, tuple)) else [eos]
    if ids.dim() == 2 and not ids.is_floating_point() and pad is not None and pad not in eos:
        return int((ids != pad).sum())
    return int(ids.shape[0] * ids.shape[1])


def check_recording(rec: moehooks.Recorder, model: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """What is wrong with the recording of one ``generate`` call, or None."""
    tokens, counts = rec.tokens(), rec.counts()
    if bool((tokens != tokens[0]).any()):
        return f"recording: the MoE layers routed different token counts {tokens.tolist()}"
    top_k = torch.tensor(rec.top_k, device=counts.device)
    if not torch.equal(counts.sum(-1), tokens * top_k):
        return f"recording: choices per layer {counts.sum(-1).tolist()} are not tokens x top-k {(tokens * top_k).tolist()}"
    prompt = _prompt_tokens(model, args, kwargs)
    prefill = int(rec.tokens(phase="prefill")[0])
    if prompt is not None and prefill != prompt:
        return f"recording: {prefill} prefill tokens for a prompt of {prompt} real tokens"
    return None


def run_twice(model: nn.Module, generate: Callable[..., Any], args: tuple, kwargs: dict, calls: Calls,
              hooks: Callable[[nn.Module], contextlib.AbstractContextManager] = default_hooks) -> Any:
    """``generate(model, *args, **kwargs)`` unhooked on copies, then inside ``hooks(model)``; returns the hooked
    result (the unhooked one when moehooks refuses the call). Raises AssertionError naming the first difference."""
    rng, configs = _rng(), _configs(model, args, kwargs)
    reference = dict(_copy(kwargs), streamer=None) if "streamer" in kwargs else _copy(kwargs)
    try:
        expected, expected_error = generate(model, *_copy(args), **reference), None
    except Exception as exc:  # compared with what the hooked call raises
        expected, expected_error = None, exc
    rng_after = _rng()
    _set_rng(rng)
    _restore(configs)
    try:
        with hooks(model) as rec:
            result = model.generate(*args, **kwargs)
    except Exception as exc:
        reason = refusal(exc)
        if reason is not None:
            calls.refusals.append(reason)
            _set_rng(rng_after)
            if expected_error is not None:
                raise expected_error from None
            return expected
        if expected_error is not None and type(exc) is type(expected_error):
            raise
        calls.differences.append(f"hooked generate raised {type(exc).__name__}: {exc}")
        raise AssertionError(f"moehooks: {calls.differences[-1]} (unhooked: {expected_error!r})") from exc
    if expected_error is not None:
        calls.differences.append(f"only the unhooked generate raised {type(expected_error).__name__}: {expected_error}")
        raise AssertionError(f"moehooks: {calls.differences[-1]}") from expected_error
    calls.compared += 1
    problem = first_difference(expected, result) or first_difference(rng_after, _rng(), "random state")
    problem = problem or check_recording(rec, model, args, kwargs)
    if problem:
        calls.differences.append(problem)
        raise AssertionError(f"moehooks: hooked generate differs from unhooked: {problem}")
    return result


class GeneratePatch:
    """Replaces ``GenerationMixin.generate`` with ``run_twice`` while entered; calls made from inside a run
    (an assistant's generate, moehooks' own wrapper) go straight to the original."""

    def __init__(self, hooks: Callable[[nn.Module], contextlib.AbstractContextManager] = default_hooks) -> None:
        self.hooks = hooks
        self.calls = Calls()
        self._depth = 0
        self._original: Callable[..., Any] | None = None

    def __enter__(self) -> GeneratePatch:
        from transformers.generation.utils import GenerationMixin

        original = self._original = GenerationMixin.generate

        @functools.wraps(original)
        def generate(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return original(model, *args, **kwargs)
            self._depth += 1
            try:
                return run_twice(model, original, args, kwargs, self.calls, self.hooks)
            finally:
                self._depth -= 1

        GenerationMixin.generate = generate
        return self

    def __exit__(self, *exc: object) -> None:
        from transformers.generation.utils import GenerationMixin

        GenerationMixin.generate = self._original
        self._original = None

    def take(self) -> Calls:
        """The calls seen since the last ``take``."""
        calls, self.calls = self.calls, Calls()
        return calls


# ---- pytest hooks ---------------------------------------------------------------------------------------
_PATCH = GeneratePatch()
_KEY = pytest.StashKey[Calls]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--moehooks-report", default=None, metavar="FILE",
                     help="append one JSON line per test: outcome, generate calls compared, refusals, differences")


def pytest_configure(config: pytest.Config) -> None:
    _PATCH.__enter__()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PATCH._original is not None:
        _PATCH.__exit__()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _PATCH.take()
    try:
        return (yield)
    finally:
        item.stash[_KEY] = _PATCH.take()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    report = yield
    if call.when != "call":
        return report
    calls = item.stash.get(_KEY, Calls())
    if report.passed and calls.refusals:
        report.outcome, report.wasxfail = "skipped", f"moehooks refused: {calls.refusals[0]}"
    report.user_properties.append(("moehooks", vars(calls)))
    path = item.config.getoption("--moehooks-report")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": item.nodeid, "outcome": report.outcome, "xfail": hasattr(report, "wasxfail"),
                                **vars(calls)}) + "\n")
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = [(r.nodeid, dict(r.user_properties).get("moehooks")) for key in ("passed", "failed", "skipped", "xfailed")
            for r in terminalreporter.stats.get(key, []) if getattr(r, "when", "") == "call"]
    rows = [(nodeid, calls) for nodeid, calls in rows if calls]
    compared = sum(calls["compared"] for _, calls in rows)
    terminalreporter.section("moehooks: generate unhooked vs record + steer(soft, beta=0)")
    terminalreporter.line(f"{compared} generate calls compared bit for bit in {len(rows)} tests")
    for nodeid, calls in rows:
        for text in calls["differences"]:
            terminalreporter.line(f"DIFFERS {nodeid}: {text}")
        for text in calls["refusals"][:1]:
            terminalreporter.line(f"REFUSED {nodeid}: {text}")
