"""Time grids for masked-diffusion samplers: t_0 = 1 (all masked) > t_1 > ... > t_N in [0, 1].

A sampler built with ``timesteps=None`` uses the uniform grid of ``num_steps`` steps; any strictly
decreasing grid in [0, 1] may be given instead (a cosine-spaced grid, or one LSD+ learned). The grid
is float64: step probabilities such as (alpha_s - alpha_t) / (1 - alpha_t) lose precision in
float32 when steps are small.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dlm.errors import ConfigError


def uniform_timesteps(num_steps: int, device: torch.device | str | None = None) -> Tensor:
    """(num_steps + 1,) float64 grid 1, 1 - 1/N, ..., 0."""
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=device)


def check_timesteps(timesteps: Sequence[float] | Tensor) -> Tensor:
    """A user grid as a float64 tensor (N + 1,), refused unless strictly decreasing within [0, 1]."""
    grid = torch.as_tensor(timesteps, dtype=torch.float64).detach().reshape(-1)
    if grid.numel() < 2:
        raise ConfigError(f"sampler.timesteps needs at least two times (one step), got {grid.tolist()}")
    if bool((grid < 0).any() or (grid > 1).any()):
        raise ConfigError(f"sampler.timesteps must lie in [0, 1], got {grid.tolist()}")
    if bool((grid[1:] >= grid[:-1]).any()):
        raise ConfigError(f"sampler.timesteps must be strictly decreasing (t = 1 is all masked), got {grid.tolist()}")
    return grid


def resolve_timesteps(num_steps: int, timesteps: Sequence[float] | Tensor | None) -> Tensor:
    """A sampler's grid (N + 1,) float64 on the CPU: ``timesteps`` checked, else uniform with ``num_steps``."""
    if num_steps < 1:
        raise ConfigError(f"sampler.num_steps={num_steps} must be >= 1")
    return check_timesteps(timesteps) if timesteps is not None else uniform_timesteps(num_steps)
