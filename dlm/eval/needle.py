"""Needle-in-a-haystack retrieval accuracy: a depth x length grid of exact-match rates.

A cell (row length L, depth d) holds ``num_docs`` documents of ``dlm.data.needle`` (rows ``[BOS]
document [EOS]`` of L tokens, the needle pair at depth d; document i of every depth of one length
shares its seed, so the depths of a length differ only in where the needle and distractors sit).
The model retrieves the answer (the query's ``value_len`` digits) and a document counts as correct
when every answer token is exactly right:

    accuracy(d, L) = (1 / N) * sum_n  1[ answer_hat_n == answer_n ]      (all value_len tokens)

How the model answers is fixed by its attention (its declared contract, nothing sniffed):
- ``bidirectional`` (masked diffusion): the row with the answer positions masked is the canvas; the
  confidence sampler unmasks them greedily, one per network call, most confident first
  (``ConfidenceSampler(num_steps=value_len, order=max_prob, temperature=0)``: infilling; the EOS
  after the answer stays visible, as in training rows).
- ``causal`` (AR): greedy continuation of the row up to the answer (``AutoregressiveSampler`` with
  ``top_k=1``), value_len new tokens.
- ``block_causal`` (block diffusion): the same masked canvas, infilled by the block sampler
  (``BlockSampler(num_steps=value_len, order=max_prob, temperature=0)``): the answer's block is
  denoised given the clean earlier blocks and its own visible tokens (the EOS), one position per call;
  without the KV cache, as the answer sits in the last block and a prefix cache would save nothing.
Both are deterministic, so the grid depends on the documents' seed only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dlm.data.needle import NeedleDoc, NeedleTask, document_seed, needle_document, needle_row
from dlm.errors import ConfigError
from dlm.eval.lengths import check_lengths
from dlm.samplers.autoregressive import AutoregressiveSampler
from dlm.samplers.block import BlockSampler
from dlm.samplers.canvas import model_device
from dlm.samplers.confidence import ConfidenceSampler
from dlm.types import Attention, Denoiser

Retriever = Callable[[Denoiser, Tensor, slice], Tensor]  # (model, rows (B, L), answer span) -> answers (B, n)


def infill_answer(sampler, model: Denoiser, rows: Tensor, answer: slice) -> Tensor:
    """``rows[:, answer]`` (B, n) masked and filled by ``sampler`` given the rest of each row (B, L)."""
    canvas = rows.clone()
    canvas[:, answer] = model.mask_id
    out = sampler(model, batch_size=rows.shape[0], length=rows.shape[1], prompt=canvas)
    return out.tokens[:, answer]


def fill_masked_answer(model: Denoiser, rows: Tensor, answer: slice) -> Tensor:
    """Masked diffusion: unmask the answer (B, n) on the whole canvas; greedy, one position per call, most
    confident first."""
    sampler = ConfidenceSampler(num_steps=answer.stop - answer.start, order="max_prob", temperature=0.0)
    return infill_answer(sampler, model, rows, answer)


def fill_masked_block(model: Denoiser, rows: Tensor, answer: slice) -> Tensor:
    """Block diffusion: infill the answer (B, n) with the block sampler (its block denoised given the clean
    earlier blocks and its own given tokens); greedy, one position per call, most confident first."""
    sampler = BlockSampler(num_steps=answer.stop - answer.start, order="max_prob", temperature=0.0,
                           use_cache=False, stop_at_eos=False)
    return infill_answer(sampler, model, rows, answer)


def continue_greedily(model: Denoiser, rows: Tensor, answer: slice) -> Tensor:
    """AR: greedy continuation of ``rows[:, :answer.start]`` for the answer's n tokens -> (B, n)."""
    sampler = AutoregressiveSampler(temperature=1.0, top_k=1)  # top_k=1: the argmax token, no randomness
    out = sampler(model, batch_size=rows.shape[0], length=answer.stop, prompt=rows[:, : answer.start])
    return out.tokens[:, answer]


RETRIEVERS: dict[Attention, Retriever] = {"bidirectional": fill_masked_answer, "causal": continue_greedily,
                                          "block_causal": fill_masked_block}


def retriever_for(model: Denoiser) -> Retriever:
    """How ``model`` answers, from its declared attention (module docstring)."""
    if model.attention not in RETRIEVERS:
        raise ConfigError(f"needle retrieval decodes masked-diffusion (bidirectional), block-diffusion "
                          f"(block_causal) and AR (causal) models; this model has attention={model.attention!r}")
    return RETRIEVERS[model.attention]


def cell_documents(task: NeedleTask, *, depth: float, num_docs: int, seed: int) -> list[NeedleDoc]:
    """The ``num_docs`` documents of one grid cell (seeds shared by every depth of a length)."""
    row_len = task.length + 2
    return [needle_document(task, seed=document_seed(seed, f"grid{row_len}", i), depth=depth) for i in range(num_docs)]


@torch.no_grad()
def cell_accuracy(model: Denoiser, tokenizer, task: NeedleTask, *, depth: float, num_docs: int, seed: int = 0,
                  batch_size: int = 32, retriever: Retriever | None = None) -> dict:
    """Exact-match accuracy of one cell and the counts behind it (module docstring)."""
    retriever = retriever or retriever_for(model)
    docs = cell_documents(task, depth=depth, num_docs=num_docs, seed=seed)
    rows = torch.tensor([needle_row(d, tokenizer) for d in docs], dtype=torch.long, device=model_device(model))
    answer = slice(1 + task.answer_start, 1 + task.length)  # +1: the row's BOS
    correct = 0
    for i in range(0, len(docs), batch_size):
        batch = rows[i : i + batch_size]
        correct += int((retriever(model, batch, answer) == batch[:, answer]).all(-1).sum())
    return {"seq_len": task.length + 2, "depth": depth, "accuracy": correct / len(docs), "correct": correct,
            "num_docs": len(docs), "needle_depth": sum(d.depth for d in docs) / len(docs)}  # as placed (rounded offsets)


def needle_grid(model: Denoiser, tokenizer, *, lengths: Sequence[int], depths: Sequence[float], num_docs: int = 64,
                num_pairs: int = 4, key_len: int = 2, value_len: int = 3, num_queries: int = 1, seed: int = 0,
                batch_size: int = 32,
                progress: Callable[[dict], None] | None = None) -> dict:
    """The depth x length grid: ``accuracy[i][j]`` is the cell (depths[i], lengths[j]); ``cells`` lists
    every cell's counts; ``progress(cell)`` is called after each one. Lengths are row lengths in tokens;
    a length beyond ``model.max_seq_len`` is refused before any compute (extend the context first)."""
    lengths = check_lengths(lengths, model.max_seq_len, key="lengths")
    tasks = {L: NeedleTask.for_row(L, num_pairs=num_pairs, key_len=key_len, value_len=value_len,
                                   num_queries=num_queries) for L in lengths}
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"depths={list(depths)}: every depth must lie in [0, 1] (0 = start of the document, "
                              "1 = just before the query)")
    retriever = retriever_for(model)
    cells, grid = [], [[0.0] * len(lengths) for _ in depths]
    for j, L in enumerate(lengths):
        for i, d in enumerate(depths):
            cell = cell_accuracy(model, tokenizer, tasks[L], depth=d, num_docs=num_docs, seed=seed,
                                 batch_size=batch_size, retriever=retriever)
            grid[i][j] = cell["accuracy"]
            cells.append(cell)
            if progress is not None:
                progress(cell)
    return {"lengths": list(lengths), "depths": list(depths), "accuracy": grid, "cells": cells,
            "mean_accuracy": sum(c["correct"] for c in cells) / sum(c["num_docs"] for c in cells)}

