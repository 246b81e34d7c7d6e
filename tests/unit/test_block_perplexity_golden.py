"""Golden: ``block_nelbo_per_sequence`` (dlm-eval-ppl's block bound) gives the numbers of the code before
its draws and scoring were split for the lm-eval adapter (commit 5977da3), for time-free, time-conditioned and
shift_logits block models, mc and quadrature. Bit for bit on the CPU that recorded them; another CPU's float32
kernels may round the last bits differently (seen: 4e-8 relative on an Intel Xeon against the AMD EPYC record), so
the sums are compared to 1e-6 relative, their variances (differences of near sums) to 1e-4, the token counts
exactly. Any change to the estimator (its draws, weights or scored positions) moves them by far more."""

from __future__ import annotations

import pytest
import torch

from dlm.eval.block_perplexity import block_nelbo_per_sequence
from dlm.models.transformer import Transformer

GOLDEN = [[94.46043395996094, 87.88045120239258, 83.53367614746094, 92.03345156736519, 39.922909727683866, 17.031271551590184, 15, 15, 15], [85.56482315063477, 76.52631568908691, 75.36352634429932, 32.252819005948055, 4.387051299460533, 26.010502690096178, 15, 15, 15], [108.5367169380188, 70.36068868637085, 72.0149278640747, 962.8494555053417, 203.6651755432706, 130.67895766355255, 15, 15, 15], [75.24569177627563, 100.20225143432617, 73.74024963378906, 499.04239360608176, 79.15837450496717, 9.755471721941527, 15, 15, 15], [104.20022773742676, 74.45263290405273, 66.2880506515503, 78.4563923228064, 20.15375229500447, 62.01839033476276, 15, 15, 15], [107.32731056213379, 80.47802352905273, 76.37400817871094, 7.198999020371654, 45.51266008839108, 21.620903918053955, 15, 15, 15]]  # per case: nll (3 rows), variance (3 rows), scored tokens (3 rows)


def test_block_bound_equals_the_code_before_the_split():
    got = []
    for tc, shift in ((False, False), (True, False), (False, True)):
        torch.manual_seed(0)
        model = Transformer(vocab_size=16, mask_id=15, dim=32, n_layers=2, n_heads=4, max_seq_len=16,
                            attention="block_causal", block_size=4, time_conditioned=tc, shift_logits=shift,
                            init_std=0.5).eval()
        x = torch.randint(0, 15, (3, 16), generator=torch.Generator().manual_seed(1))
        for method in ("mc", "quadrature"):
            nll, var, n = block_nelbo_per_sequence(model, {"input_ids": x}, block_size=4, num_samples=4, method=method,
                                                   keep_first_token=True, shift_logits=shift,
                                                   generator=torch.Generator().manual_seed(2))
            got.append([float(v) for v in nll] + [float(v) for v in var] + [int(v) for v in n])
    assert len(got) == len(GOLDEN)
    for row, want in zip(got, GOLDEN, strict=True):
        assert row[6:] == want[6:]  # scored tokens: exact
        assert row[:3] == pytest.approx(want[:3], rel=1e-6, abs=0.0)  # summed NLL per sequence
        assert row[3:6] == pytest.approx(want[3:6], rel=1e-4, abs=0.0)  # variance: a difference of near sums, more rounding
