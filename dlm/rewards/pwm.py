"""Transcription-factor motif rewards for DNA: JASPAR/MEME matrices scanned over both strands.

A MEME motif is a position frequency matrix P (w, 4) over ACGT. With background b (4,) and a
pseudocount eps its log-odds position weight matrix is

    W[j, c] = log( (P[j, c] + eps·b[c]) / (1 + eps) / b[c] )         (natural log, nats)

and the score of the window starting at i of a (soft) sequence x (L, 4) is s_i = sum_j sum_c
W[j, c]·x[i+j, c] (a conv1d; for a one-hot x exactly the log-odds of those letters). The reverse
strand is scanned with the reverse complement W_rc[j, c] = W[w-1-j, 3-c] (A<->T, C<->G are ids
c <-> 3-c in "ACGT"), so a motif scores the same on either strand.

``PWMReward`` (differentiable): soft-max pooling over positions and strands,

    r(x) = sum_k weight_k · tau · log sum_{strand, i} exp(s^k_{strand,i}(x) / tau)        (B,)

which tends to sum_k weight_k · max_i s^k_i as tau -> 0 and has finite gradients for tau > 0.
``PWMHitCount`` (derivative-free): sum_k weight_k · #{(strand, i): s^k_{strand,i} >= threshold_k} on
the argmax letters, with threshold_k = min_k + fraction·(max_k - min_k) of motif k's score range.
Both read the alphabet columns of the (B, L, V) model-vocabulary input (``letter_probs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dlm.errors import ConfigError
from dlm.rewards.protocol import letter_probs

DNA = "ACGT"
DEFAULT_MEME = Path(__file__).resolve().parents[2] / "data" / "jaspar" / "liver_factors.meme"
LIVER_FACTORS = ("HNF4A", "HNF1A", "FOXA2", "CEBPB")


@dataclass(frozen=True)
class Motif:
    name: str  # "MA0114.4 HNF4A": JASPAR id and factor
    pfm: list[list[float]]  # (w, 4) letter probabilities, rows sum to 1


def read_meme(path: str | Path | None = None) -> tuple[list[Motif], list[float]]:
    """(motifs, background) of a MEME-format file (``ALPHABET= ACGT``, ``letter-probability matrix``
    blocks); ``path=None`` reads the shipped ``data/jaspar/liver_factors.meme``. Background defaults
    to uniform when the file gives none."""
    p = Path(path).expanduser() if path is not None else DEFAULT_MEME
    if not p.is_file():
        raise ConfigError(f"reward.path={p} does not exist; give a MEME motif file (data/jaspar/liver_factors.meme "
                          "is shipped)")
    lines = p.read_text(encoding="utf-8").splitlines()
    background, motifs = [0.25] * 4, []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("ALPHABET=") and line.split("=", 1)[1].strip() != DNA:
            raise ConfigError(f"{p}: ALPHABET {line.split('=', 1)[1].strip()!r}; DNA motif rewards read ACGT")
        if line.startswith("Background letter frequencies"):
            parts = lines[i + 1].split()
            freq = dict(zip(parts[::2], map(float, parts[1::2]), strict=False))
            background = [freq.get(c, 0.25) for c in DNA]
        if line.startswith("MOTIF"):
            name = " ".join(line.split()[1:3])
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("letter-probability matrix"):
                j += 1
            header = lines[j].split() if j < len(lines) else []
            try:
                width = int(header[header.index("w=") + 1])
                rows = [[float(v) for v in lines[j + 1 + r].split()] for r in range(width)]
            except (ValueError, IndexError) as err:
                raise ConfigError(f"{p}: motif {name!r} has no readable 'letter-probability matrix ... w= N' block "
                                  f"({err})") from err
            if any(len(r) != 4 for r in rows):
                raise ConfigError(f"{p}: motif {name!r} has a row without 4 probabilities")
            motifs.append(Motif(name, rows))
            i = j + width
        i += 1
    if not motifs:
        raise ConfigError(f"{p} holds no MOTIF block; is it a MEME file?")
    return motifs, background


def select_motifs(motifs: Sequence[Motif], names: Sequence[str] | None) -> list[Motif]:
    """Motifs whose id or factor name equals one of ``names`` (case-insensitive), in ``names`` order; a factor
    with several matrices in the file (HNF4A: MA0114.4, MA1494.1 in full JASPAR) gives its first one."""
    if names is None:
        return list(motifs)
    out = []
    for want in names:
        hits = [m for m in motifs if want.upper() in (part.upper() for part in m.name.split())]
        if not hits:
            raise ConfigError(f"reward.motifs names {want!r}, which is not in the file; valid: "
                              f"{', '.join(m.name for m in motifs)}")
        out.append(hits[0])
    return out


def log_odds(pfm: Tensor, background: Tensor, pseudocount: float) -> Tensor:
    """(w, 4) log-odds PWM of a (w, 4) frequency matrix (module docstring)."""
    return torch.log((pfm + pseudocount * background) / (1.0 + pseudocount) / background)


def reverse_complement(pwm: Tensor) -> Tensor:
    """W_rc[j, c] = W[w-1-j, 3-c]: the matrix of the opposite strand (ACGT order)."""
    return pwm.flip(0).flip(1)


class _PWMScan:
    """Per-motif two-strand window scores; shared by the soft reward and the hit count."""

    alphabet = DNA

    def __init__(self, *, motifs: Sequence[dict | Motif], weights: Sequence[float] | None = None,
                 background: Sequence[float] = (0.25, 0.25, 0.25, 0.25), pseudocount: float = 0.05,
                 length: int | None = None) -> None:
        self.motifs = [m if isinstance(m, Motif) else Motif(str(m["name"]), [list(map(float, r)) for r in m["pfm"]])
                       for m in motifs]
        if not self.motifs:
            raise ConfigError("reward.motifs is empty; name at least one motif")
        self.weights = [1.0] * len(self.motifs) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.motifs):
            raise ConfigError(f"reward.weights has {len(self.weights)} entries for {len(self.motifs)} motifs; give "
                              "one weight per motif")
        if pseudocount <= 0 or len(background) != 4 or min(background) <= 0:
            raise ConfigError("reward.pseudocount must be > 0 and reward.background four positive frequencies")
        self.background, self.pseudocount, self.length = [float(b) for b in background], float(pseudocount), length
        bg = torch.tensor(self.background, dtype=torch.float64)
        self.pwms = [log_odds(torch.tensor(m.pfm, dtype=torch.float64), bg, self.pseudocount).float()
                     for m in self.motifs]

    def scores(self, x: Tensor) -> list[Tensor]:
        """Per motif, (B, 2, L-w+1) window scores of both strands of x (B, L, 4); empty if L < w."""
        xt = x.float().transpose(1, 2)  # (B, 4, L): channels = letters for conv1d
        out = []
        for pwm in self.pwms:
            if xt.shape[-1] < pwm.shape[0]:  # no window fits (conv1d would raise): no score
                out.append(xt.new_zeros(xt.shape[0], 2, 0))
                continue
            kernels = torch.stack([pwm.T, reverse_complement(pwm).T]).to(xt)  # (2, 4, w)
            out.append(F.conv1d(xt, kernels))
        return out

    def _spec(self, target: str, **extra) -> dict:
        return {"_target_": target, "motifs": [{"name": m.name, "pfm": m.pfm} for m in self.motifs],
                "weights": self.weights, "background": self.background, "pseudocount": self.pseudocount,
                "length": self.length, **extra}


class PWMReward(_PWMScan):
    """Weighted soft-max (tau-logsumexp) of two-strand PWM scores: (B, L, V) -> (B,). Differentiable."""

    differentiable = True

    def __init__(self, *, temperature: float = 1.0, **kwargs) -> None:
        if temperature <= 0:
            raise ConfigError(f"reward.temperature={temperature} must be > 0 (it divides the scores)")
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def __call__(self, probs: Tensor) -> Tensor:
        x = letter_probs(probs, self.alphabet)
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for weight, s in zip(self.weights, self.scores(x), strict=True):
            if s.shape[-1] > 0:
                total = total + weight * self.temperature * torch.logsumexp(s.flatten(1) / self.temperature, dim=-1)
        return total

    def save(self, directory: Path) -> dict:
        return self._spec("dlm.rewards.pwm.PWMReward", temperature=self.temperature)


class PWMHitCount(_PWMScan):
    """Weighted count of windows (either strand) scoring >= threshold on the argmax letters: (B,). Not
    differentiable (serves base, svdd, smc, best_of_n)."""

    differentiable = False

    def __init__(self, *, min_score_fraction: float = 0.8, **kwargs) -> None:
        if not 0.0 <= min_score_fraction <= 1.0:
            raise ConfigError(f"reward.min_score_fraction={min_score_fraction} must lie in [0, 1]")
        super().__init__(**kwargs)
        self.min_score_fraction = float(min_score_fraction)
        self.thresholds = [float(p.min(-1).values.sum() + min_score_fraction
                                 * (p.max(-1).values.sum() - p.min(-1).values.sum())) for p in self.pwms]

    def __call__(self, probs: Tensor) -> Tensor:
        x = letter_probs(probs, self.alphabet)
        hard = F.one_hot(x.argmax(-1), len(self.alphabet)).float()
        total = hard.new_zeros(hard.shape[0])
        for weight, thr, s in zip(self.weights, self.thresholds, self.scores(hard), strict=True):
            # 1e-4 absorbs float32 rounding of a window scoring exactly the threshold
            total = total + weight * (s >= thr - 1e-4).flatten(1).sum(-1).float()
        return total

    def save(self, directory: Path) -> dict:
        return self._spec("dlm.rewards.pwm.PWMHitCount", min_score_fraction=self.min_score_fraction)


def pwm_reward_from_meme(path: str | None = None, *, motifs: Sequence[str] | None = LIVER_FACTORS,
                         weights: Sequence[float] | None = None, pseudocount: float = 0.05,
                         temperature: float = 1.0, length: int | None = None) -> PWMReward:
    """``PWMReward`` of the named motifs of a MEME file (default: the shipped liver factors)."""
    found, background = read_meme(path)
    return PWMReward(motifs=select_motifs(found, motifs), weights=weights, background=background,
                     pseudocount=pseudocount, temperature=temperature, length=length)


def pwm_hit_count_from_meme(path: str | None = None, *, motifs: Sequence[str] | None = LIVER_FACTORS,
                            weights: Sequence[float] | None = None, pseudocount: float = 0.05,
                            min_score_fraction: float = 0.8, length: int | None = None) -> PWMHitCount:
    """``PWMHitCount`` of the named motifs of a MEME file (default: the shipped liver factors)."""
    found, background = read_meme(path)
    return PWMHitCount(motifs=select_motifs(found, motifs), weights=weights, background=background,
                       pseudocount=pseudocount, min_score_fraction=min_score_fraction, length=length)
