"""The per-forward batch description every hook reads: what each router row is, and whose prompt it belongs to.

Which router rows are real prompt tokens, which are generated, which are padding, recomputed or copies, and which
prompt each row belongs to.

Example (``inputs``: two left-padded prompts, 58 real tokens; beam search runs each prompt twice):
    >>> import moehooks
    >>> with moehooks.record(model, per_sample=True) as rec:
    ...     out = model.generate(**inputs, max_new_tokens=4, num_beams=2)
    >>> rec.tokens(phase="prefill")   # each real prompt token once, whatever the generate mode
    tensor([58, 58, 58, 58, 58, 58])
    >>> int(inputs["attention_mask"].sum())
    58
    >>> rec.sample_counts().shape     # one row per prompt (beams belong to their prompt)
    torch.Size([2, 6, 8])

The description of a forward call is ``describe(call, state)`` (a ``moehooks.rows.Batch``): a function of the
call's facts (``Call``, read from its arguments by ``read_call``) and of what the run showed so far (``State``:
prompts numbered, the ``Generate`` run in progress), which it advances; tests drive it call by call without a
model. The model's ``moehooks.tracker.Tracker`` runs it in a forward pre-hook and tells the state what
``generate`` was given (``prompt_facts``): the prompt length, the prompt's attention mask, how many rows each
prompt was expanded to (beams, ``num_return_sequences``) and the end-of-sequence ids.
A row of a call is the token at absolute position ``start + j`` of its sequence, where ``start`` is the length
of the KV cache passed in (whatever keyword holds it: ``past_key_values`` up to transformers 5.23, ``cache`` from
5.24), read where it is a Python number (dynamic caches) and counted by the tracker where it lives on the device
(static caches) or where the cache answers 0 after the prefill (one whose first layer holds no keys: MiniMax's
linear-attention layers), or 0 without a cache (``use_cache=False``). Then, inside ``generate``:

* positions before the prompt length are **prefill** rows, later ones **decode** rows (also within one call:
  chunked prefill, ``use_cache=False``, prompt-lookup candidates);
* padding comes from the prompt's 2-D mask (``generate(attention_mask=...)`` or a 2-D mask in the call,
  keyword or positional); 4-D and per-layer-type dict masks are not read inside ``generate``;
* rows are **counted** (recorded) once: positions recomputed under ``use_cache=False`` weigh 0; of a prompt
  expanded to ``n`` rows only the first copy's prompt tokens count, while every copy's (every beam's)
  decode rows count, attributed to its prompt; decode rows fed an end-of-sequence token or later (the padding
  ``generate`` appends to finished rows) weigh 0 (not tracked under beam search, whose rows are reordered);
  speculative candidates (assisted / prompt-lookup decoding) are counted when verified and **retracted** when
  ``generate`` crops them from the cache, so only accepted tokens stay counted;
* image rows come from the prompt's token types given to ``generate`` (``mm_token_type_ids``): generated
  columns are text, also candidates that a verifying call holds beyond its own token types;
* a ``generate`` without a prompt (from BOS) has its prompt read from its first call; a ``generate`` of the model
  inside its own (the model as its own assistant) is described against the outer prompt and counts nothing.

Outside ``generate`` a call without a cache or with an empty one is a batch of new prompts (every real token
prefill); a call with a non-empty cache is decode (a manual decode loop; a cache that answers 0 has the
positions its call's 2-D mask holds beyond the call). Padding is read from the mask in
any form: 2-D keyword or positional, 4-D ``[batch, 1, query, key]`` (a row is real where it may attend to its
own position), or a dict of those per layer type. A call that cannot be described raises ``ValueError``
naming the model call.
"""

from __future__ import annotations

import importlib
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from .rows import Batch, cells, recomputing  # noqa: F401  re-exported: moehooks.batch.Batch keeps working


@dataclass
class Call:
    """The facts of one forward call that its description reads: ``batch x seq`` tokens on ``device``, its
    ``input_ids`` (``None`` for embeddings), attention mask (any form), token-type ids, the KV cache object passed
    in (``None`` without one) and its length (a number for dynamic caches, a device tensor for static ones), and,
    for a packed row of continuous batching, ``cu_seq_lens_q``, ``position_ids`` and the paged cache's
    ``(write_index, read_index, cu_seq_lens_k)``.

        >>> call = Call(batch=2, seq=3, ids=torch.tensor([[5, 6, 7], [0, 8, 9]]),
        ...             mask=torch.tensor([[1, 1, 1], [0, 1, 1]]))
        >>> describe(call, State()).valid.tolist()
        [1, 1, 1, 0, 1, 1]
    """

    batch: int
    seq: int
    device: torch.device = torch.device("cpu")
    ids: torch.Tensor | None = None
    mask: Any = None
    types: torch.Tensor | None = None
    cache: Any = None
    length: int | torch.Tensor | None = None
    bounds: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    slots: tuple[Any, Any, Any] | None = None


@dataclass
class Generate:
    """The state of one ``generate`` run: what it was given (``prompt_facts``) and what its calls so far showed."""

    prompts: int  # rows of input_ids given to generate
    prompt_len: int  # -1 until the first call when generate builds the prompt itself (from BOS)
    mask: torch.Tensor | None  # [prompts, prompt_len] 2-D attention mask given to generate
    eos: list[int]
    beams: bool
    types: torch.Tensor | None = None  # [prompts, prompt_len] token-type ids given to generate (0 text)
    counted: bool = True  # False for a generate nested in the model's own generate (an assistant: its drafts)
    factor: int = 0  # rows per prompt, known at the first forward call
    first_sample: int = 0
    seen: int = 0  # positions counted so far
    alive: torch.Tensor | None = None  # [rows] 0 once a row was fed an end-of-sequence token
    eos_ids: torch.Tensor | None = None
    cache: Any = None  # weakref to the last dynamic cache seen

    def nested(self) -> Generate:
        """The state of a ``generate`` of the model inside this one (the model as its own assistant): described
        against this prompt, counting nothing."""
        return Generate(self.prompts, self.prompt_len, self.mask, self.eos, self.beams, self.types, counted=False,
                        first_sample=self.first_sample)

    def unaccepted(self) -> int:
        """Positions counted but no longer in the last dynamic cache (candidates cropped after the last call)."""
        length = _cache_length(self.cache() if self.cache is not None else None)
        return self.seen - length if isinstance(length, int) and length < self.seen else 0


@dataclass
class Packed:
    """The state of one ``generate_batch`` (continuous batching) run."""

    prompts: list[list[int]]
    first_sample: int
    started: list[bool]  # per prompt: its prefill segment was seen
    owners: dict[int, int] = field(default_factory=dict)  # the cache slot of a prompt's position 0 -> prompt


@dataclass
class State:
    """What the description of a model's calls carries from call to call: prompts numbered so far, the
    ``generate`` / ``generate_batch`` run in progress, and the row tensors made per call shape; ``retracted``
    holds the positions the last described call showed were rejected (0 when none)."""

    model_name: str = "model"
    image_token_id: int | None = None
    samples: int = 0
    gen: Generate | None = None
    packed: Packed | None = None
    retracted: int = 0
    shapes: dict[tuple, _Layout] = field(default_factory=dict, repr=False)

    def start(self, gen: Generate) -> Generate:
        """Open the ``generate`` run ``gen``: its prompts are numbered after those seen so far."""
        gen.first_sample, self.samples = self.samples, self.samples + gen.prompts
        self.gen = gen
        return gen

    def start_packed(self, prompts: list[list[int]]) -> None:
        """Open a ``generate_batch`` run of ``prompts``."""
        self.packed = Packed(prompts, self.samples, [False] * len(prompts))
        self.samples += len(prompts)


def prompt_facts(args: tuple, kwargs: dict[str, Any], config: Any = None, model_name: str = "model") -> Generate:
    """What ``generate(*args, **kwargs)`` was given: the prompt rows and length (learnt at the first call when
    ``generate`` builds the prompt itself from BOS, with as many rows as its first tensor argument has, else one,
    as ``generate`` does), the prompt's 2-D mask and token types, the end-of-sequence ids (from the arguments or
    the model's generation ``config``), beam search.

        >>> gen = prompt_facts((), {"input_ids": torch.ones(2, 4, dtype=torch.long), "num_beams": 3, "eos_token_id": 0})
        >>> gen.prompts, gen.prompt_len, gen.eos, gen.beams
        (2, 4, [0], True)
    """
    ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if ids is None:
        prompts = next((int(v.shape[0]) for v in kwargs.values() if isinstance(v, torch.Tensor) and v.dim()), 1)
        prompt_len = -1
    elif isinstance(ids, torch.Tensor) and ids.dim() >= 2:
        prompts, prompt_len = int(ids.shape[0]), int(ids.shape[1])
    else:
        raise ValueError(f"{model_name}.generate: moehooks needs input_ids (or inputs_embeds) of shape "
                         "[batch, seq] to describe the prompt")
    mask = kwargs.get("attention_mask")
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    types = kwargs.get("moe_mm_token_type_ids", kwargs.get("mm_token_type_ids"))
    types = types if isinstance(types, torch.Tensor) and tuple(types.shape) == (prompts, prompt_len) else None
    config = kwargs.get("generation_config") or config
    eos = kwargs.get("eos_token_id", getattr(config, "eos_token_id", None))
    eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    beams = int(kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1) > 1
    return Generate(prompts, prompt_len, mask, eos, beams, types)


def read_call(params: list[str], args: tuple, kwargs: dict[str, Any]) -> Call | None:
    """The facts of the forward call ``forward(*args, **kwargs)`` whose positional parameters are ``params``;
    ``None`` for a call without ``input_ids`` or ``inputs_embeds`` of shape ``[batch, seq, ...]``."""
    inputs = _bind(params, args, kwargs)
    ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
    ids = ids if isinstance(ids, torch.Tensor) else None
    ref = ids if ids is not None else embeds
    if not isinstance(ref, torch.Tensor) or ref.dim() < 2:
        return None
    cache = next((v for v in inputs.values() if callable(getattr(v, "get_seq_length", None))), None)
    return Call(int(ref.shape[0]), int(ref.shape[1]), ref.device, ids, inputs.get("attention_mask"),
                inputs.get("moe_mm_token_type_ids", inputs.get("mm_token_type_ids")), cache, _cache_length(cache),
                inputs.get("cu_seq_lens_q"), inputs.get("position_ids"),
                tuple(inputs.get(k) for k in ("write_index", "read_index", "cu_seq_lens_k")))


def describe(call: Call, state: State) -> Batch:
    """The router rows of ``call`` given what ``state`` holds of the run so far (which it updates: prompts
    numbered, positions counted, rows finished, ``state.retracted``).

    Outside ``generate``, a call without a cache is a batch of new prompts:

        >>> state = State()
        >>> prefill = describe(Call(batch=1, seq=3), state)
        >>> prefill.phase.tolist(), prefill.count.tolist(), prefill.sample.tolist(), state.samples
        ([0, 0, 0], [1, 1, 1], [0, 0, 0], 1)

    Inside ``generate`` (``state.start(prompt_facts(...))``) positions past the prompt are decode rows:

        >>> gen = state.start(prompt_facts((torch.ones(1, 3, dtype=torch.long),), {}))
        >>> describe(Call(batch=1, seq=4), state).phase.tolist()  # use_cache=False: the whole sequence again
        [0, 0, 0, 1]
    """
    state.retracted = 0
    if state.packed is not None:
        return _describe_packed(call, state.packed, state)
    if state.gen is not None:
        return _describe_generate(call, state.gen, state)
    return _describe_forward(call, state)


def _describe_forward(call: Call, state: State) -> Batch:
    length = call.length
    if isinstance(length, torch.Tensor):  # a static cache outside generate: its length lives on the device
        length = int(length)
    elif length == 0 and isinstance(call.mask, torch.Tensor) and call.mask.dim() == 2:
        length = max(call.mask.shape[1] - call.seq, 0)  # a cache that does not count: the mask covers past + call
    start = 0 if call.cache is None else int(length)
    prompt = call.seq if start == 0 else 0
    if prompt:
        first = state.samples
        state.samples += call.batch
    else:
        first = max(state.samples - call.batch, 0)
    valid = _valid_rows(call.mask, call.batch, call.seq, start, call.device, state.model_name)
    return _batch(call, state, start, prompt, start + prompt, valid, valid, first, call.batch, 1)


def _describe_generate(call: Call, gen: Generate, state: State) -> Batch:
    batch, seq, device = call.batch, call.seq, call.device
    if not gen.factor:
        if batch % gen.prompts:
            raise ValueError(f"{state.model_name}.forward got {batch} rows inside generate() of {gen.prompts} "
                             "prompts; moehooks cannot tell which prompt each row belongs to")
        gen.factor = batch // gen.prompts
    if call.cache is None:
        start = 0  # use_cache=False: every call recomputes the sequence from its first position
    elif isinstance(call.length, int) and (call.length or not gen.seen):
        start = call.length
        gen.cache = weakref.ref(call.cache)
        if start < gen.seen:  # the cache was cropped: the previous call's trailing candidates were rejected
            if gen.counted:
                state.retracted = gen.seen - start
            gen.seen = start
    else:  # a static cache, or one that does not count (0 after the prefill): positions advance call by call
        start, gen.cache = gen.seen, None
    if gen.prompt_len < 0:  # generate built the prompt (BOS): its first call holds it whole
        gen.prompt_len = start + seq
    prompt = min(max(gen.prompt_len - start, 0), seq)
    valid = _generate_valid(call, gen, state, start, prompt)
    alive = _alive(call, gen, start, prompt)
    layout = _layout(state, batch, seq, prompt, gen.factor, device)
    if not gen.counted:
        count = layout.zeros
    elif start >= gen.seen and gen.factor == 1 and (prompt == seq or seq == 1):  # plain prefill or decode step
        count = valid if isinstance(alive, int) else valid * alive.reshape(-1)
    else:
        cols = torch.arange(start, start + seq, device=device)
        fresh = (cols >= gen.seen).long()  # [seq] not counted before (use_cache=False recomputes)
        is_prompt = (cols < gen.prompt_len).long()
        copy = (torch.arange(batch, device=device) % gen.factor == 0).long()  # [batch] a prompt's first copy
        weight = is_prompt[None, :] * copy[:, None] + (1 - is_prompt)[None, :] * alive
        count = valid * (fresh[None, :] * weight).reshape(-1)
    # any generated column read with a cache may be a candidate that a later crop rejects (also a lone one)
    speculative = gen.counted and call.cache is not None and seq > prompt
    gen.seen = max(gen.seen, start + seq)
    image = _generate_image(gen, layout, batch, seq, start, prompt, device)
    return _batch(call, state, start, prompt, gen.prompt_len, valid, count, gen.first_sample, gen.prompts,
                  gen.factor, speculative, image, gen.mask)


def _describe_packed(call: Call, packed: Packed, state: State) -> Batch:
    """One packed row of continuous batching: segments ``cu_seq_lens_q``, positions ``position_ids``.

    The layout is read on the host (one small copy per forward call; continuous batching itself reads
    every step's tokens back to update its requests). A segment starting at position 0 is a whole prompt,
    matched to the first not yet started prompt with those tokens; a one-token segment at a later position
    is a decode step, of the prompt whose position-0 cache slot it reads first (sample -1 where the paged
    cache's indices do not say). Anything else (a prompt split into chunks) raises.
    """
    name, seq = state.model_name, call.seq
    if not isinstance(call.bounds, torch.Tensor) or not isinstance(call.positions, torch.Tensor) or call.ids is None:
        raise ValueError(f"{name}.forward inside generate_batch got no input_ids, cu_seq_lens_q and "
                         "position_ids; moehooks cannot tell the requests apart")
    bounds, positions = call.bounds.tolist(), call.positions.reshape(-1).tolist()
    tokens = call.ids.reshape(-1).tolist()
    phase, sample = [0] * seq, [0] * seq
    writes, reads = _segment_slots(call, bounds, positions)
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if positions[a] == 0:
            r = next((r for r, p in enumerate(packed.prompts)
                      if not packed.started[r] and p == tokens[a:b]), None)
            if r is None:
                raise ValueError(f"{name}.forward inside generate_batch: a prompt was split into "
                                 "chunks (or is unknown); moehooks counts whole prompts only: raise the "
                                 "continuous batching config's max_batch_tokens above the longest prompt")
            packed.started[r] = True
            sample[a:b] = [r] * (b - a)
            packed.owners[writes[k]] = r
        elif b - a == 1:
            phase[a] = 1
            sample[a] = packed.owners.get(reads[k], -1)
        else:
            raise ValueError(f"{name}.forward inside generate_batch: a segment of {b - a} tokens at "
                             f"position {positions[a]} is neither a whole prompt nor a decode step")
    real = bounds[-1]
    valid = [1] * real + [0] * (seq - real)  # columns past the last segment pad static shapes
    phase_t, sample_t, valid = (torch.tensor(x, dtype=torch.long).to(call.device) for x in (phase, sample, valid))
    phases = tuple(sorted(set(phase[:real]))) or (0,)
    batch = _batch(call, state, 0, 0, 0, valid, valid, packed.first_sample, len(packed.prompts), 1)
    batch.phase, batch.sample, batch.phases, batch.packed = phase_t, sample_t, phases, True
    batch.positions = call.positions
    return batch


def _segment_slots(call: Call, bounds: list[int], positions: list[int]) -> tuple[list[int], list[int]]:
    """Per segment of a packed row: the cache slot its first token is written to, and (decode segments) the first
    slot it reads, its prompt's position 0; -1 where the call holds no paged-cache indices."""
    segments = len(bounds) - 1
    write, read, cu_k = (_first_group(x) for x in (call.slots or (None, None, None)))
    if not all(isinstance(x, torch.Tensor) for x in (write, read, cu_k)):
        return [-1] * segments, [-1] * segments
    writes = write.reshape(-1)[bounds[:-1]].tolist()
    starts, flat = cu_k.reshape(-1).tolist(), read.reshape(-1)
    decode = [k for k in range(min(segments, len(starts) - 1)) if positions[bounds[k]] and starts[k] < flat.numel()]
    reads = [-1] * segments
    for k, slot in zip(decode, flat[[starts[k] for k in decode]].tolist()):
        reads[k] = slot
    return writes, reads


def _first_group(index: Any) -> Any:
    """The first layer group's tensor of a paged-cache index given as a tensor, a list or a dict of them."""
    if isinstance(index, dict):
        return next(iter(index.values()), None)
    if isinstance(index, (list, tuple)):
        return index[0] if index else None
    return index


def _generate_valid(call: Call, gen: Generate, state: State, start: int, prompt: int) -> torch.Tensor:
    """Real rows of a call inside ``generate``: generated columns always are; prompt columns where the call's
    2-D mask (when it covers the call) or else the prompt's mask says so."""
    batch, seq, device = call.batch, call.seq, call.device
    if not prompt:
        return _layout(state, batch, seq, 0, gen.factor, device).ones
    mask = call.mask
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= start + seq:
        return mask[:, start:start + seq].reshape(-1).to(device=device, dtype=torch.long).contiguous()
    valid = torch.ones(batch, seq, dtype=torch.long, device=device)
    if gen.mask is not None:
        part = gen.mask[:, start:start + prompt].to(device=device, dtype=torch.long)
        valid[:, :prompt] = part.repeat_interleave(gen.factor, dim=0)
    return valid.reshape(-1)


def _generate_image(gen: Generate, layout: _Layout, batch: int, seq: int, start: int, prompt: int,
                    device: torch.device) -> torch.Tensor | None:
    """Image rows of a call inside ``generate`` from the prompt's token types given to ``generate``: prompt
    columns as those say, generated columns text (as ``generate`` extends them); ``None`` without them.

    The call's own token types can hold fewer columns than the call (assisted and prompt-lookup decoding
    send candidates that ``generate`` has not appended to them yet) or be shifted against its positions."""
    if gen.types is None:
        return None
    if not prompt:
        return layout.zeros
    image = torch.zeros(batch, seq, dtype=torch.long, device=device)
    part = (gen.types[:, start:start + prompt] != 0).to(device=device, dtype=torch.long)
    image[:, :prompt] = part.repeat_interleave(gen.factor, dim=0)
    return image.reshape(-1)


def _alive(call: Call, gen: Generate, start: int, prompt: int) -> torch.Tensor | int:
    """``[batch, 1]`` 0 for rows already fed an end-of-sequence token (1 when not tracked)."""
    new = start + call.seq - max(gen.seen, start + prompt)  # fresh decode columns of this call
    if gen.beams or not gen.eos or new != 1 or call.ids is None:
        return 1
    if gen.alive is None:
        gen.alive = torch.ones(call.batch, dtype=torch.long, device=call.device)
    fed = call.ids[:, -1]
    if gen.eos_ids is None:
        gen.eos_ids = torch.tensor(gen.eos, device=fed.device)
    gen.alive = gen.alive * (~torch.isin(fed, gen.eos_ids)).to(device=call.device, dtype=torch.long)
    return gen.alive[:, None]


def _batch(call: Call, state: State, start: int, prompt: int, prompt_len: int, valid: torch.Tensor,
           count: torch.Tensor, first: int, samples: int, factor: int, speculative: bool = False,
           image: torch.Tensor | None = None, pad_mask: torch.Tensor | None = None) -> Batch:
    batch, seq, device = call.batch, call.seq, call.device
    layout = _layout(state, batch, seq, prompt, factor, device)
    types = _last(call.types, seq)
    if image is None and types is not None:
        image = (types != 0).reshape(-1).long().to(device)
    elif image is None and call.ids is not None and state.image_token_id is not None:
        image = (call.ids == state.image_token_id).reshape(-1).long()
    elif image is None:
        image = layout.zeros
    mask = call.mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] < start + seq:
        mask = pad_mask  # a mask that does not reach back to position 0
    return Batch(batch, seq, valid, count.contiguous(), layout.phase, image, layout.sample, first, samples,
                 layout.phases, start, prompt, prompt_len, factor, speculative, modality_ids=types, ids=call.ids,
                 pad_mask=mask)


def _layout(state: State, batch: int, seq: int, prompt: int, factor: int, device: torch.device) -> _Layout:
    """Row tensors that depend only on the call's shape, made once (decode steps repeat the same shape)."""
    key = (batch, seq, prompt, factor, device)
    layout = state.shapes.get(key)
    if layout is None:
        if len(state.shapes) > 64:
            state.shapes.clear()
        rows = batch * seq
        layout = state.shapes[key] = _Layout(
            torch.ones(rows, dtype=torch.long, device=device),
            torch.zeros(rows, dtype=torch.long, device=device),
            (torch.arange(seq, device=device) >= prompt).long().repeat(batch),
            (torch.arange(batch, device=device) // factor).repeat_interleave(seq),
            (0,) if prompt == seq else (1,) if prompt == 0 else (0, 1),
        )
    return layout


class _Layout(NamedTuple):
    """A call shape's constant row tensors (``[rows]`` long) and the phases it holds."""

    ones: torch.Tensor
    zeros: torch.Tensor
    phase: torch.Tensor
    sample: torch.Tensor
    phases: tuple[int, ...]


def _bind(params: list[str], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name: positional ones named from the forward signature."""
    if not args:
        return kwargs
    return {**dict(zip(params, args)), **kwargs}


def _cache_length(cache: Any) -> int | torch.Tensor | None:
    if cache is None:
        return None
    length = cache.get_seq_length()
    return int(length) if isinstance(length, int) else length


def _valid_rows(mask: Any, batch: int, seq: int, start: int, device: torch.device, model: str) -> torch.Tensor:
    """0/1 ``[batch * seq]``: real tokens of a call at positions ``start .. start + seq - 1``, from any mask form."""
    if isinstance(mask, dict):
        mask = next((m for m in mask.values() if isinstance(m, torch.Tensor)), None)
    if mask is None:
        return torch.ones(batch * seq, dtype=torch.long, device=device)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{model}.forward: moehooks cannot read padding from an attention mask of type "
                         f"{type(mask).__name__}; pass a 2-D attention_mask")
    if mask.dim() == 2 and mask.shape[1] >= seq:
        # contiguous: a decode step's column of the mask is a strided view, and compiled code would guard on
        # its stride (the mask length) and recompile
        cols = mask[:, start:start + seq] if mask.shape[1] >= start + seq else mask[:, -seq:]
        return cols.reshape(-1).to(device=device, dtype=torch.long).contiguous()
    if mask.dim() == 4 and mask.shape[2] == seq and mask.shape[3] >= start + seq:
        rows = torch.arange(seq, device=mask.device)
        own = mask[:, 0, rows, start + rows]  # [batch, seq] may each token attend to itself?
        allowed = own if own.dtype == torch.bool else own == 0
        return allowed.reshape(-1).to(device=device, dtype=torch.long).contiguous()
    raise ValueError(f"{model}.forward: moehooks cannot read padding from an attention mask of shape "
                     f"{tuple(mask.shape)} for {batch}x{seq} tokens at position {start}")


def _last(types: Any, seq: int) -> torch.Tensor | None:
    """The call's last ``seq`` columns of its token types; ``None`` when they hold fewer columns than the call."""
    if not isinstance(types, torch.Tensor) or types.dim() != 2 or types.shape[1] < seq:
        return None
    return types[:, -seq:]


def __getattr__(name: str) -> Any:
    """``moehooks.batch.Tracker``: deprecated alias of ``moehooks.tracker.Tracker``, where it now lives."""
    if name == "Tracker":
        warnings.warn("moehooks.batch.Tracker moved to moehooks.tracker.Tracker", DeprecationWarning, stacklevel=2)
        return importlib.import_module(f"{__package__}.tracker").Tracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
