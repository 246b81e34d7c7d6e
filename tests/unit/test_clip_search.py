"""BD3-LM clipped-interval search: candidates, the one-pass per-interval statistics, the argmin."""

import torch

from dlm.diffusion.clip_search import best_interval, clip_candidates, interval_stats
from dlm.objectives.block import BlockDiffusionLoss


def test_candidates_slide_each_width_and_start_with_the_full_interval():
    c = clip_candidates([0.5, 0.9], 0.25, (1e-3, 1.0))
    assert c[0].tolist() == [1e-3, 1.0]
    assert c[1:].tolist() == [[0.0, 0.5], [0.25, 0.75], [0.5, 1.0], [0.0, 0.9]]


def test_stats_are_the_per_batch_means_inside_each_interval():
    t = torch.tensor([0.1, 0.6, 0.7, 0.2, 0.9])
    loss = torch.tensor([10.0, 1.0, 3.0, 20.0, 5.0])
    batch = torch.tensor([0, 0, 0, 1, 1])
    cand = torch.tensor([[0.0, 1.0], [0.5, 1.0]], dtype=torch.float64)
    s = interval_stats(t, loss, batch, cand)
    m_full, m_high = [14 / 3, 12.5], [2.0, 5.0]
    assert torch.allclose(s[0], torch.tensor([sum(m_full), sum(x * x for x in m_full), 2.0], dtype=torch.float64))
    assert torch.allclose(s[1], torch.tensor([sum(m_high), sum(x * x for x in m_high), 2.0], dtype=torch.float64))


def test_search_avoids_the_noisy_low_t_region():
    g = torch.Generator().manual_seed(0)
    n_batches, per_batch = 64, 32
    t = torch.rand(n_batches * per_batch, generator=g)
    noise = torch.randn(t.shape, generator=g)
    loss = 1.0 + 10.0 * noise * (t < 0.3)  # the estimator is noisy only for t < 0.3
    batch = torch.arange(n_batches).repeat_interleave(per_batch)
    cand = clip_candidates([0.5, 0.6, 0.7], 0.05, (1e-3, 1.0))
    a, b = best_interval(interval_stats(t, loss, batch, cand), cand)
    assert a >= 0.3 - 1e-9 and b <= 1.0
    # a constant loss: every candidate has variance 0, the full interval (first) is kept
    flat = best_interval(interval_stats(t, torch.ones_like(t), batch, cand), cand)
    assert flat == (1e-3, 1.0)


def test_segment_losses_match_the_loss_per_token():
    from dlm.models.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(vocab_size=12, mask_id=11, dim=16, n_layers=1, n_heads=2, max_seq_len=16,
                        attention="block_causal", block_size=4)
    x0 = torch.randint(0, 11, (3, 16))
    obj = BlockDiffusionLoss(block_size=4)
    t, loss = obj.segment_losses(model, {"input_ids": x0}, torch.Generator().manual_seed(1))
    out = obj(model, {"input_ids": x0}, torch.Generator().manual_seed(1))
    assert t.shape == (12,) and ((t >= 1e-3) & (t <= 1)).all()
    # every block has 4 eligible tokens: the per-block losses x 4 add up to the batch's summed loss
    assert torch.allclose(loss.sum() * 4, out.nll_sum, rtol=1e-5)


def test_callback_validates_on_the_full_interval_then_trains_on_the_chosen_one():
    from types import SimpleNamespace

    from dlm.models.transformer import Transformer
    from dlm.train.callbacks import ClipIntervalSearch

    torch.manual_seed(0)
    model = Transformer(vocab_size=12, mask_id=11, dim=16, n_layers=1, n_heads=2, max_seq_len=16,
                        attention="block_causal", block_size=4).eval()
    obj = BlockDiffusionLoss(block_size=4, t_min=0.3, t_max=0.8)
    logged = {}
    module = SimpleNamespace(objective=obj, device=torch.device("cpu"), forward_model=model,
                             all_gather=lambda x: x, log=lambda k, v, **kw: logged.__setitem__(k, v))
    trainer = SimpleNamespace(global_rank=0, sanity_checking=False)
    cb = ClipIntervalSearch(widths=(0.5,), delta=0.25)
    cb.on_fit_start(trainer, module)
    cb.on_validation_epoch_start(trainer, module)
    assert (obj.t_min, obj.t_max) == (1e-3, 1.0)  # validation scores the NELBO bound
    for i in range(4):
        cb.on_validation_batch_end(trainer, module, None, {"input_ids": torch.randint(0, 11, (4, 16))}, i)
    cb.on_validation_epoch_end(trainer, module)
    assert cb.interval is not None and (obj.t_min, obj.t_max) == (max(cb.interval[0], 1e-6), cb.interval[1])
    assert logged["clip/t_max"] == obj.t_max
    restored = ClipIntervalSearch(widths=(0.5,), delta=0.25)
    restored.load_state_dict(cb.state_dict())
    obj2 = BlockDiffusionLoss(block_size=4)
    restored.on_fit_start(trainer, SimpleNamespace(objective=obj2))
    assert (obj2.t_min, obj2.t_max) == (obj.t_min, obj.t_max)


def test_resampling_puts_every_feasible_block_inside_the_clipped_interval():
    obj = BlockDiffusionLoss(block_size=5, t_min=0.4, t_max=0.8, resample=True, resample_tries=64)
    g = torch.Generator().manual_seed(0)
    b, n = 64, 20
    seg = torch.arange(n).div(5, rounding_mode="floor").expand(b, n)
    eligible = torch.ones(b, n, dtype=torch.bool)
    eligible[0, :5] = False  # a block with nothing to score stays as it is
    prob = torch.full((b, n), 0.6)
    masked = (torch.rand(b, n, generator=g) < prob) & eligible
    before = masked.view(b, 4, 5).float().mean(-1)
    out = obj.resample_masks(masked, prob, eligible, seg, g)
    frac = out.view(b, 4, 5).float().mean(-1)[1:]
    assert ((before[1:] < 0.4) | (before[1:] > 0.8)).any(), "the test needs blocks to fix"
    assert ((frac >= 0.4) & (frac <= 0.8)).all()
    assert not out[0, :5].any() and not (out & ~eligible).any()
    # blocks already inside keep their draw
    inside = (before >= 0.4) & (before <= 0.8)
    assert torch.equal(out.view(b, 4, 5)[inside], masked.view(b, 4, 5)[inside])
