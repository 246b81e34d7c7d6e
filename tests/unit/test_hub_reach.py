"""Offline machines fail at once: an unreachable Hub is detected by one quick probe, and dataset loads
then use the local cache only instead of ~30 s of retries."""

from __future__ import annotations

import pytest

from dlm.data import hub_reach
from dlm.errors import OfflineError


def test_an_endpoint_that_refuses_is_unreachable_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert not hub_reach.hub_reachable(timeout_s=2.0)


def test_unreachable_hub_loads_offline_and_restores_the_flags(monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hub_reach, "hub_reachable", lambda timeout_s=3.0: False)
    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    with hub_reach.datasets_offline_unless_reachable() as offline:
        assert offline and datasets.config.HF_HUB_OFFLINE and constants.HF_HUB_OFFLINE
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == saved


def test_a_hub_corpus_is_loaded_cache_only_when_unreachable(monkeypatch):
    """The load runs in offline mode (no ~30 s retry loop), and its failure names the local-file option."""
    import datasets
    import datasets.config

    from dlm.data.corpus import load_documents

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hub_reach, "hub_reachable", lambda timeout_s=3.0: False)
    seen = []

    def load_dataset(*args, **kwargs):
        seen.append(datasets.config.HF_HUB_OFFLINE)
        raise ConnectionError("not in the cache")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(OfflineError, match="Use local files instead"):
        list(load_documents("wikitext2", split="test"))
    assert seen == [True]
