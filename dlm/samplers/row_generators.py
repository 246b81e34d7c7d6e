"""Per-row random streams: a row's sample does not depend on which other rows share its batch.

With one ``torch.Generator`` per call, row b's random numbers depend on the rows drawn before it, so
the same prompt gives another sample at batch size 1 than inside a batch of 8. ``RowGenerators``
holds one generator per row (seeded by the caller, e.g. from a request's index); every draw a
sampler makes is then taken row by row, in the same order as the batched draw. Samplers accept either
kind wherever they take ``generator`` (``AncestralSampler`` and the samplers built on it).
Shapes: B rows, then whatever each row draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class RowGenerators:
    """One generator per batch row; ``select(rows)`` gives the streams of a subset of rows."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seeds: Sequence[int], device: str | torch.device = "cpu") -> RowGenerators:
        return cls([torch.Generator(device=device).manual_seed(int(s)) for s in seeds])

    def __len__(self) -> int:
        return len(self.generators)

    def select(self, rows: Tensor) -> RowGenerators:
        """The streams of the rows where ``rows`` (B,) bool is True, in row order."""
        return RowGenerators([self.generators[i] for i in rows.nonzero()[:, 0].tolist()])

    def rand(self, shape: Sequence[int], *, dtype: torch.dtype, device: torch.device | str) -> Tensor:
        """Uniforms of ``shape`` (B, ...): row b from generator b."""
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} row generators for a batch of {shape[0]} rows")
        return torch.stack([torch.rand(tuple(shape[1:]), dtype=dtype, device=device, generator=g)
                            for g in self.generators]) if shape[0] else torch.empty(tuple(shape), dtype=dtype,
                                                                                    device=device)


Generator = torch.Generator | RowGenerators | None


def uniform(shape: Sequence[int], generator: Generator, *, dtype: torch.dtype = torch.float64,
            device: torch.device | str = "cpu") -> Tensor:
    """U[0, 1) of ``shape`` (B, ...) from one generator (batched draw) or from one per row."""
    if isinstance(generator, RowGenerators):
        return generator.rand(shape, dtype=dtype, device=device)
    return torch.rand(tuple(shape), dtype=dtype, device=device, generator=generator)
