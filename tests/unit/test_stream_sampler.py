"""The training stream (``StreamSampler``): the plain stream is seeded permutations epoch after epoch; a
curriculum's phases switch parts at a stream position, each part its own stream; resuming and ranks
continue the same stream in the same phase."""

from __future__ import annotations

import types

import pytest
import torch

from dlm.train.datamodule import StreamSampler, stream_loader


def plain(n: int, count: int, seed: int) -> list[int]:
    """The stream as defined: permutation e of range(n) seeded with seed + e, concatenated."""
    out: list[int] = []
    e = 0
    while len(out) < count:
        out += torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)).tolist()
        e += 1
    return out[:count]


def stream(n, count: int, *, seed: int = 3, rank: int = 0, world: int = 1, consumed: int = 0, starts=(0,)):
    return list(StreamSampler(n, num_samples=count, seed=seed, rank=rank, world_size=world,
                              consumed=lambda: consumed, starts=starts))


def test_one_part_is_the_plain_stream_and_a_list_of_one_size_the_same():
    assert stream(7, 30) == plain(7, 30, 3)
    assert stream([7], 30) == stream(7, 30)


def test_phases_switch_part_at_their_start_and_each_part_is_its_own_stream():
    sizes, starts = [5, 7], [0, 12]
    s = stream(sizes, 40, starts=starts)
    assert s[:12] == plain(5, 12, 3)  # part 0: indices 0..4, its own permutations
    assert s[12:] == [5 + i for i in plain(7, 28, 3)]  # part 1 from position 12, offset by part 0's size
    assert sorted(s[12:19]) == list(range(5, 12))  # a whole epoch of part 1 before any repeat


def test_resume_continues_the_same_stream_in_the_right_phase():
    sizes, starts = [5, 7], [0, 12]
    whole = stream(sizes, 40, starts=starts)
    for consumed in (0, 4, 11, 12, 13, 39):
        assert stream(sizes, 40, starts=starts, consumed=consumed) == whole[consumed:]


def test_ranks_interleave_the_global_stream_across_a_phase_switch():
    sizes, starts = [5, 7], [0, 12]
    whole = stream(sizes, 40, starts=starts)
    r0, r1 = (stream(sizes, 20, starts=starts, rank=r, world=2) for r in (0, 1))
    assert [x for pair in zip(r0, r1, strict=True) for x in pair] == whole


@pytest.mark.parametrize("starts", [(0, 0), (1, 5), (0, 9, 4), (0,)])
def test_bad_phase_starts_are_refused(starts):
    with pytest.raises(ValueError, match="stream phases"):
        stream([5, 7], 10, starts=starts) if len(starts) != 3 else stream([5, 7, 2], 10, starts=starts)


def test_stream_loader_switches_on_the_same_optimiser_step_on_every_rank():
    """phase_steps count optimiser steps: with batch 2, accumulation 3 and 2 ranks, step 4 is global
    position 4 * 2 * 3 * 2 = 48, and each rank's first row of step 4 comes from the second part."""
    parts = torch.utils.data.ConcatDataset([list(range(100)), list(range(100, 130))])
    for rank in (0, 1):
        trainer = types.SimpleNamespace(max_steps=6, accumulate_grad_batches=3, global_rank=rank, world_size=2,
                                        global_step=0)
        rows = [int(x) for batch in stream_loader(parts, trainer, batch_size=2, seed=0, phase_steps=(4,))
                for x in batch]
        assert len(rows) == 6 * 3 * 2
        assert all(x < 100 for x in rows[: 4 * 6]) and all(x >= 100 for x in rows[4 * 6:])
        trainer.global_step = 5  # resumed at step 5: the rest of the same rows
        resumed = [int(x) for batch in stream_loader(parts, trainer, batch_size=2, seed=0, phase_steps=(4,))
                   for x in batch]
        assert resumed == rows[5 * 6:]
