"""Run evaluations and recordings as several processes (``accelerate launch`` / ``torchrun``) with one output.

    accelerate launch --num_processes 4 cli.py eval items.jsonl --model qwen3-vl --out runs/eval.jsonl

Example (one process, where every step is the identity or the single-process call):
    >>> import moehooks
    >>> from moehooks import distributed
    >>> from moehooks.generation import build_inputs
    >>> state = distributed.launched_state()                  # None in a single process
    >>> print(state)
    None
    >>> rows = distributed.sharded_eval(model, processor, items, "runs/results.jsonl", state=state)
    >>> [(row["id"], row["prediction"], row["correct"]) for row in rows]
    [('arith_v1_00', '18', True), ('arith_v1_01', '11', True)]
    >>> mine = distributed.shard_items(items, state)          # this process's share: here all of them
    >>> with moehooks.record(model) as rec:
    ...     logits = model(**build_inputs(processor, mine)).logits
    >>> distributed.reduce_recorder_tables(rec, state) is rec  # every process now holds the summed tables
    True
    >>> distributed.finish()                                  # before the program exits

Items are split into contiguous shards in process order (``shard_items``); process ``r`` appends its rows to
its own resumable ``results.rank{r}.jsonl`` and the main process merges the rank files into the results file a
single process would have written: the same rows in the same order when the shards are whole batches
(``merge_results``). Routing tables are summed over processes with one all-reduce per dtype
(``accelerate.utils.reduce``); per-sample tables are gathered in process order. With one process every
function here is the identity or plain ``moehooks.evaluate.run_eval``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, reduce

from . import evaluate, runs
from .hooks import MODALITIES
from .items import Item
from .recording import _CELLS, Recorder, _Tables
from .results import current_rows, eval_settings, read_results
from .util import atomic_write

T = TypeVar("T")
_LONG = ("counts",)
_FLOAT = ("gates", "probs")


def launched_state() -> PartialState | None:
    """accelerate's process state when this program was started as several processes, else ``None``.

        state = launched_state()
        if state is None or state.is_main_process:
            print(summary)

    Several processes means ``WORLD_SIZE > 1`` (set by ``accelerate launch`` and ``torchrun``). The state is
    created on first use (``PartialState(cpu=True)`` on machines without CUDA: gloo backend) and shared by the
    whole program.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return PartialState(cpu=not torch.cuda.is_available())


def finish() -> None:
    """End a multi-process run: destroy the process group (launchers report an abort otherwise); else nothing.

        try:
            main()
        finally:
            distributed.finish()
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        PartialState().destroy_process_group()


def is_main(state: PartialState | None) -> bool:
    """Whether this process writes shared outputs: the only process, or the main one of several."""
    return state is None or state.is_main_process


def shard_items(items: Sequence[T], state: PartialState | None) -> Sequence[T]:
    """This process's contiguous share of ``items`` (``items`` itself with one process).

        shard_items(list(range(7)), state)   # 3 processes: [0, 1, 2] / [3, 4] / [5, 6]

    Shares differ in length by at most one, earlier processes take the extra items; a process may get none.
    """
    if state is None or state.num_processes == 1:
        return items
    size, extra = divmod(len(items), state.num_processes)
    rank = state.process_index
    start = rank * size + min(rank, extra)
    return items[start : start + size + (rank < extra)]


def rank_path(path: str | os.PathLike[str], rank: int) -> Path:
    """The per-process results file of ``path``: ``runs/results.jsonl`` -> ``runs/results.rank1.jsonl``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def merge_results(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write the rows of per-process results files to ``out`` (atomically) as one results file.

        merge_results([rank_path("runs/r.jsonl", r) for r in range(4)], "runs/r.jsonl")

    Rows are grouped by (settings key, method, trial) in order of first appearance, ``paths`` in order within a
    group, so contiguous shards give the order a single process writes; a repeated (run, method, trial, id)
    keeps its last row. The settings of the keys (``moehooks.runs.read_settings``) are merged too. Missing
    files are read as empty.
    """
    groups: dict[tuple[Any, str, int], dict[str, dict[str, Any]]] = {}
    for path in paths:
        for row in read_results(path):
            groups.setdefault((row.get("run"), row["method"], int(row["trial"])), {})[str(row["id"])] = row
    runs.record_settings(out, {k: v for path in paths for k, v in runs.read_settings(path).items()})
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for rows in groups.values() for row in rows.values()]
    return atomic_write(out, "".join(lines).encode("utf-8"))


def sharded_eval(model: Any, processor: Any, items: Sequence[Item], out_path: str | os.PathLike[str], *,
                 state: PartialState | None, **options: Any) -> list[dict[str, Any]]:
    """``evaluate.run_eval`` over this process's share of ``items``, merged into ``out_path`` by the main process.

        sharded_eval(model, processor, items, "runs/results.jsonl", state=launched_state(), method="soft",
                     context=lambda: moehooks.steer(model, experts, mode="soft"))

    Process ``r`` appends to ``rank_path(out_path, r)`` (resumable: rerun with the same number of processes);
    the rows are keyed by the settings of the whole item list (``moehooks.results.eval_settings``), so every share
    belongs to one run. After every process is done the main process rewrites ``out_path`` from all rank files,
    and every process returns once that file is complete. Returns this process's rows; the main process
    returns the run's rows of all items. With ``state=None`` (or one process) this is exactly
    ``evaluate.run_eval(model, processor, items, out_path, **options)``.
    """
    if state is None or state.num_processes == 1:
        return evaluate.run_eval(model, processor, items, out_path, **options)
    keyed = {k: options[k] for k in ("method", "seed", "max_new_tokens", "generation_kwargs", "as_text", "settings")
             if k in options}
    settings = eval_settings(model, items, **keyed)
    rows = evaluate.run_eval(model, processor, shard_items(items, state), rank_path(out_path, state.process_index),
                             **(options | {"settings": settings}))
    state.wait_for_everyone()
    if state.is_main_process:
        merge_results([rank_path(out_path, r) for r in range(state.num_processes)], out_path)
        rows = current_rows(out_path, key=runs.settings_key(settings), ids=[it.id for it in items],
                                     trials=options.get("trials", 1))
    state.wait_for_everyone()
    return rows


def reduce_recorder_tables(rec: Recorder, state: PartialState | None) -> Recorder:
    """Sum ``rec``'s routing tables over all processes, in place, so each process reads the totals.

        with moehooks.record(model, per_sample=True) as rec:
            model(**inputs_of_this_process)
        reduce_recorder_tables(rec, state).counts()        # summed over processes

    Every process must call it (a collective). Counts and token totals are exact; summed gate weights and
    probabilities can differ from one process's sums in the last bits (another summation order). Per-sample
    tables are gathered: samples are numbered process after process, as ``shard_items`` orders the items. A
    process that routed nothing contributes zeros. Tables keep their routers' devices; the communication runs
    on ``state.device``. Use on a closed recorder; with ``state=None`` (or one process) nothing happens.
    """
    if state is None or state.num_processes == 1:
        return rec
    if not rec.layers:
        raise RuntimeError("the recorder was never opened: record the model before reducing its tables")
    rec.flush()
    devices = [state.device if t is None else t.counts.device for t in rec._tables]
    tables = [_Tables.zeros(_CELLS, rec.num_experts, k, state.device) if t is None else t
              for t, k in zip(rec._tables, rec.top_k)]
    flat = {
        kind: torch.cat([getattr(t, name).reshape(-1).to(state.device) for t in tables for name in names])
        for kind, names in (("long", _LONG), ("float", _FLOAT))
    }
    summed = reduce(flat, reduction="sum")
    rec._tables = _split(summed, tables, devices)
    if rec.per_sample:
        rec._samples = _gather_samples(rec._samples, devices)
    return rec


def _split(summed: dict[str, torch.Tensor], like: list[_Tables], devices: list[torch.device]) -> list[_Tables]:
    """Cut the flat summed tensors back into per-router tables shaped like ``like``, on ``devices``."""
    offsets = {"long": 0, "float": 0}
    result = []
    for table, device in zip(like, devices):
        parts = {}
        for kind, names in (("long", _LONG), ("float", _FLOAT)):
            for name in names:
                shape = getattr(table, name).shape
                count = shape.numel()
                parts[name] = summed[kind][offsets[kind] : offsets[kind] + count].view(shape).to(device)
                offsets[kind] += count
        result.append(_Tables(**parts, top_k=table.top_k))
    return result


def _gather_samples(samples: list[list[tuple[int, _Tables]]],
                    devices: list[torch.device]) -> list[list[tuple[int, _Tables]]]:
    """Every process's per-sample chunks, per router, renumbered process after process."""
    local = [[(first, {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(t).items()})
              for first, t in chunks] for chunks in samples]
    everyone = gather_object([local])  # [processes][routers][chunks]
    merged: list[list[tuple[int, _Tables]]] = [[] for _ in samples]
    offset = 0
    for per_router in everyone:
        for i, chunks in enumerate(per_router):
            merged[i] += [(offset + first, _Tables(**{k: v.to(devices[i]) if isinstance(v, torch.Tensor) else v
                                                      for k, v in t.items()}))
                          for first, t in chunks]
        offset += sum(t["counts"].shape[0] // len(MODALITIES) for _, t in per_router[0])
    return merged
