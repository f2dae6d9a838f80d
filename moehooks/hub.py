"""The Hugging Face hub seen from here: whether it answers, offline mode, and why a checkpoint or dataset is missing.

Example (the doctests run offline, ``HF_HUB_OFFLINE=1``):
    >>> from moehooks import hub, models
    >>> hub.offline_if_unreachable()                 # no answer from the hub: the cache only, with a warning
    True
    >>> hub.missing_checkpoint(str(models.LAB_MODEL_DIR)) is None   # None, or one line: why, and how to get it
    True
    >>> print(hub.missing_dataset("mathverse", data_dir="data"))   # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    dataset AI4Math/MathVerse, split testmini + testmini_text_only (for mathverse): data directory .../data does
    not exist; get it with `huggingface-cli download AI4Math/MathVerse --repo-type dataset --local-dir DIR/MathVerse`
    and pass --data-dir DIR

Nothing here downloads: directories and the Hugging Face cache are looked at, and while the hub answers it is
asked whether what is not cached can be had (``moehooks.preflight.missing`` gathers a plan's missing pieces).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from . import benchmarks, models


def repo_folder(hub_id: str | None) -> str | None:
    """The folder a hub repository is downloaded to under ``--data-dir`` (its name): ``"HuggingFaceH4/MATH-500"``
    -> ``"MATH-500"``."""
    return hub_id.split("/")[-1] if hub_id else None


HUB_PROBE_SECONDS = 2.0
"""How long :func:`hub_offline` waits for a TCP connection to the hub before treating it as unreachable."""


@functools.cache
def _endpoint_answers(endpoint: str) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """Whether the hub is out of reach: offline mode (``HF_HUB_OFFLINE=1``), or no TCP connection to its endpoint
    within :data:`HUB_PROBE_SECONDS` (probed once per process). Checks then look at the cache only: no request,
    no retries.

    Example:
        >>> isinstance(hub_offline(), bool)
        True
    """
    from huggingface_hub import constants

    return constants.is_offline_mode() or not _endpoint_answers(constants.ENDPOINT)


def offline_if_unreachable() -> bool:
    """Switch the Hugging Face hub client (and transformers through it) to offline mode for this process when the
    hub does not answer (:func:`hub_offline`), with a warning, so that loading from the cache never waits on
    request retries. Returns whether offline mode is on.

    Example:
        >>> offline_if_unreachable()   # the doctests run with HF_HUB_OFFLINE=1
        True
    """
    import warnings

    from huggingface_hub import constants

    if hub_offline() and not constants.is_offline_mode():
        constants.HF_HUB_OFFLINE = True
        warnings.warn(f"{constants.ENDPOINT} does not answer: working from the Hugging Face cache only "
                      "(as with HF_HUB_OFFLINE=1)", stacklevel=2)
    return constants.is_offline_mode()


def offline_state() -> str:
    """Offline mode as a plan says it: ``"on"``, ``"off"``, or off but the hub does not answer."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "on"
    return f"off, but {constants.ENDPOINT} does not answer" if hub_offline() else "off"


def hub_reachable(repo_id: str, repo_type: str) -> str | None:
    """``None`` when ``repo_id`` can be downloaded now, else why not (one line): the hub does not answer, or
    the repository is gated and no Hugging Face token is set."""
    from huggingface_hub import HfApi, get_token

    api = HfApi()
    try:
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo_id, timeout=10)
    except Exception as err:  # no network, unknown or private repository: all mean it cannot be fetched now
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
    if getattr(info, "gated", False) and get_token() is None:
        return (f"{repo_id} is gated: accept its terms on https://huggingface.co/{repo_type}s/{repo_id} and log in "
                "with `huggingface-cli login`")
    return None


def checkpoint_cached(repo_id: str) -> bool:
    """Whether ``config.json`` and every weight file of a hub checkpoint are in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> str | None:
        found = try_to_load_from_cache(repo_id, name)
        return found if isinstance(found, str) else None

    if cached("config.json") is None:
        return False
    index = cached("model.safetensors.index.json")
    if index is None:
        return cached("model.safetensors") is not None
    shards = set(json.loads(Path(index).read_text())["weight_map"].values())
    return all(cached(shard) is not None for shard in shards)


def missing_checkpoint(source: str) -> str | None:
    """Why the checkpoint ``source`` (directory or hub id) cannot be loaded here, or ``None``.

    Example:
        >>> missing_checkpoint(str(models.LAB_MODEL_DIR)) is None
        True
    """
    from huggingface_hub import constants

    path = Path(source).expanduser()
    if (path / "config.json").is_file():
        return None
    if not models._HUB_ID.match(source) or path.exists():
        return f"checkpoint {source}: no config.json in {path.resolve()}; pass a model directory or a hub id"
    if checkpoint_cached(source):
        return None
    hint = (f"get it with `huggingface-cli download {source}` (or pass its local directory with --model DIR "
            "--preset ALIAS)")
    if hub_offline():
        return f"checkpoint {source}: not (fully) in the Hugging Face cache at {constants.HF_HUB_CACHE}; {hint}"
    why = hub_reachable(source, "model")
    return None if why is None else (f"checkpoint {source}: not in the Hugging Face cache at "
                                     f"{constants.HF_HUB_CACHE} and not downloadable now ({why}); {hint}")


def missing_dataset(name: str, data_dir: str | None, split: str | None = None) -> str | None:
    """Why benchmark ``name``'s data (from ``data_dir``, else the cache or the hub) cannot be read here, with how to
    get it; ``None`` when it can."""
    from huggingface_hub import constants

    recipe = benchmarks.RECIPES[name]
    why = benchmarks.missing_data(name, data_dir, split)
    if why is None:
        return None
    folder = f"DIR/{repo_folder(recipe.hub_id)}"
    hint = (f"get it with `huggingface-cli download {recipe.hub_id} --repo-type dataset --local-dir {folder}` "
            f"and pass --data-dir DIR")
    label = f"dataset {recipe.describe(split)} (for {name})"
    if data_dir is not None:
        return f"{label}: {why.split(': ', 1)[-1]}; {hint}"
    if hub_offline():
        return f"{label}: not in the Hugging Face cache at {constants.HF_HUB_CACHE}; {hint}"
    unreachable = hub_reachable(str(recipe.hub_id), "dataset")
    if unreachable is None:
        return None
    return (f"{label}: not in the Hugging Face cache at {constants.HF_HUB_CACHE} and not downloadable now "
            f"({unreachable}); {hint}")
