"""Compiled code under hooks: opening or closing a context recompiles only the model it hooks.

Which code dynamo compiled, guards on module hooks, and dropping what a closed context left behind.

    before = compiled_entries()        # dynamo's entries of code outside moehooks, when hooks are attached
    guard_hooks()                      # dynamo guards on module hooks from now on
    ...                                # code compiled inside the context holds its hooks
    drop_compiled_since(before)        # after the hooks are removed: those entries can never run again

Example (without ``guard_hooks``, a setting of the whole process):
    >>> import torch
    >>> before = compiled_entries()
    >>> double = torch.compile(lambda x: 2 * x, backend="eager")
    >>> double(torch.ones(2))
    tensor([2., 2.])
    >>> [code.co_name for code, _ in set(compiled_entries()) - set(before)]   # what dynamo compiled since
    ['<lambda>']
    >>> drop_compiled_since(before)    # that entry can never run again ...
    >>> double(torch.ones(2))          # ... so the next call compiles the code anew
    tensor([2., 2.])
    >>> [code.co_name for code, _ in set(compiled_entries()) - set(before)]
    ['<lambda>', '<lambda>']
"""

from __future__ import annotations

import os
import sys
from types import CodeType
from typing import Any

import torch


def holds_compiled_code() -> bool:
    """Dynamo holds code it compiled from outside moehooks (a ``torch.compile``-d module or function has run
    since the last reset; moehooks' own compiled routing functions hold no module hooks)."""
    return bool(compiled_entries())


def compiled_entries() -> dict[tuple[CodeType, Any], Any]:
    """Dynamo's cache entries of code outside moehooks, by ``(code, compile_id)`` (empty while dynamo is not
    loaded): every frame dynamo looked at, compiled or skipped, and what it compiled for it."""
    frames = sys.modules.get("torch._dynamo.convert_frame")
    if frames is None:
        return {}
    entries = torch._C._dynamo.eval_frame._debug_get_cache_entry_list  # code -> its compiled entries
    codes = (ref() for ref in list(frames.input_codes.seen))
    return {(code, entry.compile_id): entry for code in codes
            if code is not None and not code.co_filename.startswith(_PACKAGE) for entry in entries(code)}


def guard_hooks() -> bool:
    """Make dynamo guard on module hooks from now on (``torch._dynamo.config.skip_nnmodule_hook_guards``, on by
    default, skips those guards: code compiled before hooks were added would run without them, and code compiled
    with them would keep running them after they were removed). With the guards, code compiled for a model whose
    hooks since changed fails them and that model recompiles, while other models keep their code. Returns whether
    the setting changed (code compiled until then holds no such guards)."""
    config = torch._dynamo.config
    if not config.skip_nnmodule_hook_guards:
        return False
    config.skip_nnmodule_hook_guards = False
    return True


def drop_compiled_since(before: dict[tuple[CodeType, Any], Any]) -> None:
    """Invalidate the compiled entries that are not in ``before`` (compiled while hooks that are now gone were
    there: their guards can never pass again). An invalidated entry still counts towards dynamo's recompile limit
    of its code, so code that reaches half of it is dropped whole (every model running it recompiles once)."""
    from torch._dynamo.guards import DeletedGuardManagerWrapper

    stale = {key: entry for key, entry in compiled_entries().items() if key not in before}
    for entry in stale.values():
        manager = entry.guard_manager
        if manager.extra_state is not None and manager.cache_entry is not None:
            manager.extra_state.invalidate(manager.cache_entry, DeletedGuardManagerWrapper("moehooks: hooks removed"))
    limit = max(torch._dynamo.config.recompile_limit // 2, 1)
    for code in {code for code, _ in stale}:
        if torch._C._dynamo.eval_frame._get_total_cache_entry_count(code) >= limit:
            torch._dynamo.reset_code(code)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
