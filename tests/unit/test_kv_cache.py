"""KVCache buffer semantics: scratch writes never leak into the committed cache, growth keeps content."""

import torch

from dlm.cache.kv import KVCache


def kv(n, start=0.0):
    x = torch.arange(n, dtype=torch.float32).add(start).view(1, 1, n, 1).expand(2, 3, n, 4).contiguous()
    return x, -x


def test_extend_returns_committed_then_new_and_only_store_commits():
    cache = KVCache(n_layers=1)
    k, v = cache.extend(0, *kv(5), store=True)
    assert torch.equal(k, kv(5)[0]) and torch.equal(v, kv(5)[1])
    k, v = cache.extend(0, *kv(3, 100.0), store=False)  # scratch: attended now, not committed
    assert torch.equal(k[:, :, :5], kv(5)[0]) and torch.equal(k[:, :, 5:], kv(3, 100.0)[0])
    assert cache.read(0)[0].shape[2] == 5
    k, _ = cache.extend(0, *kv(2, 200.0), store=True)  # overwrites the scratch slots
    assert torch.equal(cache.read(0)[0][:, :, 5:], kv(2, 200.0)[0]) and k.shape[2] == 7


def test_growth_past_capacity_keeps_every_committed_token():
    cache, ref = KVCache(n_layers=2), []
    for i in range(30):  # 30 x 7 = 210 tokens: several doublings from the initial 64
        chunk = kv(7, 10.0 * i)
        ref.append(chunk[0])
        for layer in range(2):
            cache.append(layer, *chunk)
        cache.commit_positions(torch.arange(7 * i, 7 * i + 7))
    assert cache.length == 210
    for layer in range(2):
        assert torch.equal(cache.read(layer)[0], torch.cat(ref, dim=2))


def test_truncate_and_select_rows_are_independent_copies():
    cache = KVCache(n_layers=1)
    cache.append(0, *kv(6))
    cache.commit_positions(torch.arange(6))
    sub = cache.select_rows(torch.tensor([1]))
    cache.truncate(2)
    cache.append(0, *kv(4, 50.0))
    assert sub.read(0)[0].shape == (1, 3, 6, 4) and torch.equal(sub.read(0)[0], kv(6)[0][1:])
    assert torch.equal(cache.read(0)[0][:, :, 2:], kv(4, 50.0)[0])
