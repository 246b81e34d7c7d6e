"""Is the Hugging Face Hub reachable right now? One quick probe, so offline machines fail at once.

``datasets.load_dataset`` retries an unreachable Hub for ~30 s before it looks in the local cache. A
single HEAD request to the Hub endpoint (``HF_ENDPOINT``) with a short timeout tells us first; when it
fails, the load runs in offline mode (cache only): a cached dataset still loads, a missing one fails
in well under a second with dlm's message naming the local-file alternative.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

PROBE_TIMEOUT_S = 3.0


def hub_offline_requested() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set in the environment."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the Hub endpoint answered within ``timeout_s`` (any HTTP status counts)."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout_s)
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False
    return True


@contextmanager
def datasets_offline_unless_reachable() -> Iterator[bool]:
    """Within the block, ``datasets`` and ``huggingface_hub`` use the local cache only when the Hub does
    not answer the probe (or offline mode is already requested); yields whether the block is offline."""
    import datasets.config
    from huggingface_hub import constants

    if hub_offline_requested() or hub_reachable():
        yield hub_offline_requested()
        return
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE = saved
