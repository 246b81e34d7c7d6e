"""Generative perplexity: how likely a judge autoregressive model finds generated text.

    gen_ppl = exp( sum_{s, i} w_{s,i} * -log p_judge(y_{s,i} | y_{s,<i}) / sum_{s, i} w_{s,i} )

over samples s re-tokenised by the judge, y_s = judge.encode(text_s). Token weighting as MDLM's
``compute_generative_perplexity``: every non-EOS target counts, plus the FIRST EOS target of a
sequence (ending the text is a prediction the judge should pay for); later EOS tokens, which a
diffusion sample emits as padding after its end, are ignored. Unlike MDLM the judge's BOS (EOS
for GPT-2, where it doubles as BOS) is prepended as context, so the first real token is scored
too, and a text longer than the judge's context is scored in windows that overlap by one token,
so every target is scored exactly once (MDLM's non-overlapping split leaves each window's first
token unscored).

The judge is either a dlm AR model directory (``model.json`` of family ``AR``, kind "ar") or a Hugging
Face causal-LM directory (``config.json``); ``load_judge`` tells them apart and refuses anything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dlm.errors import CheckpointError, ConfigError, NonFiniteError
from dlm.types import ArSoftmax


class Judge(Protocol):
    """An autoregressive scorer: its own tokenizer and next-token logits.

    ``bos_id`` is the context token prepended to every text (None: none, the first token goes
    unscored); ``max_len`` its context in tokens (None: unbounded).
    """

    name: str
    model: nn.Module  # the network that scores (its fingerprint goes in the result's provenance)
    bos_id: int | None
    eos_id: int | None
    max_len: int | None
    device: torch.device

    def encode(self, text: str) -> list[int]: ...

    def logits(self, ids: Tensor) -> Tensor:
        """ids (B, T) long -> next-token logits (B, T, V); position i predicts token i + 1."""
        ...


class DlmJudge:
    """A dlm AR model directory as judge, normalised as its distribution is defined (``ar_softmax``, the
    directory's record; ``dlm.objectives.ar.next_token_nll``): "without_mask" removes the [MASK] column
    before normalising, as dlm's AR objective trains (the model never emits it, and its untrained logit
    would otherwise take mass from every real token); "full" keeps every row (a converted HF model)."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str, ar_softmax: ArSoftmax) -> None:
        if model.attention != "causal":
            raise ConfigError(f"judge={name} has model.attention={model.attention!r}; a judge must be causal")
        self.model, self.tokenizer, self.name, self.ar_softmax = model, tokenizer, name, ar_softmax
        self.bos_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        self.eos_id = tokenizer.eos_id
        self.max_len = model.max_seq_len
        self.device = next(model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def logits(self, ids: Tensor) -> Tensor:
        logits = self.model(ids, None).float()
        if self.ar_softmax == "full":
            return logits
        return logits.index_fill(-1, torch.tensor([self.model.mask_id], device=logits.device), float("-inf"))


class HFJudge:
    """A Hugging Face causal LM directory (``AutoModelForCausalLM`` + ``AutoTokenizer``) as judge."""

    def __init__(self, model: nn.Module, tokenizer, *, name: str) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id
        max_len = hf_context_length(model.config)
        # tokenizers without a limit report model_max_length ~ 1e30
        if max_len is None and getattr(tokenizer, "model_max_length", 0) < 10**7:
            max_len = int(tokenizer.model_max_length)
        self.max_len = max_len
        self.device = next(model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def logits(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids).logits


def hf_context_length(config) -> int | None:
    """``max_position_embeddings`` of a HF config (GPT-2 aliases it to ``n_positions``); None when absent.
    A foreign config: not every architecture declares the field, so it is read optionally."""
    return getattr(config, "max_position_embeddings", None)


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> Judge:
    """A dlm AR model directory (model.json, family ``AR``) or a HF causal-LM directory (config.json).

    A Hugging Face Hub id of a dlm AR model directory is fetched like any model= (``dlm.io.hub``); a HF
    causal-LM directory is never downloaded: it is read with ``local_files_only=True``.
    """
    from dlm.eval.model_dir import pick_device
    from dlm.io.hub import resolve_model_path

    path = resolve_model_path(path)
    device = pick_device(device) if device == "auto" else device
    if (path / "model.json").is_file():
        from dlm.io.model_dir import load_model_dir
        from dlm.io.record import Family

        loaded = load_model_dir(path, device=device)
        if loaded.family is not Family.AR:
            raise ConfigError(
                f"judge={path} is a dlm model directory of kind {loaded.family.kind!r}; generative perplexity needs "
                "an autoregressive judge: a dlm model directory of kind 'ar' or a Hugging Face causal-LM "
                "directory (config.json), e.g. a local copy of gpt2-large"
            )
        return DlmJudge(loaded.model, loaded.tokenizer, name=str(path), ar_softmax=loaded.record.ar_softmax)
    if (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"judge={path} has a config.json but does not load as a Hugging Face causal LM with its "
                f"tokenizer ({e}); save both there with model.save_pretrained / tokenizer.save_pretrained"
            ) from e
        return HFJudge(model.to(device).eval(), tokenizer, name=str(path))
    raise CheckpointError(
        f"judge={path} is not a judge model directory: expected a dlm model directory with model.json "
        "(kind 'ar', written by dlm-train) or a Hugging Face causal-LM directory with config.json"
    )


def eos_weights(targets: Tensor, eos_id: int | None) -> Tensor:
    """MDLM's target weights: 1 for every non-EOS target and for the first EOS, 0 for later EOS.

    targets (..., T) long -> weights (..., T) float32. With no EOS id every target counts.
    """
    if eos_id is None:
        return torch.ones(targets.shape, dtype=torch.float32, device=targets.device)
    is_eos = targets == eos_id
    first_eos = is_eos & (is_eos.cumsum(-1) == 1)
    return (~is_eos | first_eos).float()


def _windows(ids: list[int], weights: list[float], context: int | None) -> list[tuple[list[int], list[float]]]:
    """Split one scored sequence into judge-context windows overlapping by one token.

    ``weights[j]`` belongs to target ``ids[j + 1]``. Window k starts at k * (context - 1), so the
    last token of one window is the (given) first token of the next: every target once.
    """
    if context is None or len(ids) <= context:
        return [(ids, weights)]
    step = context - 1
    return [(ids[s : s + context], weights[s : s + context - 1]) for s in range(0, len(ids) - 1, step)]


def scored_sequences(id_lists: Sequence[Sequence[int]], judge: Judge, *,
                     max_len: int | None = None) -> list[tuple[list[int], list[float]]]:
    """Judge-token rows to score: [context] + ids (truncated to ``max_len`` ids), split into windows."""
    if judge.max_len is not None and judge.max_len < 2:
        raise ConfigError(f"judge context max_len={judge.max_len} is too short to score anything")
    rows = []
    for ids in id_lists:
        ids = list(ids)[:max_len] if max_len is not None else list(ids)
        # with no BOS there is nothing to condition on: the first token is context, not a target
        ids = [judge.bos_id, *ids] if judge.bos_id is not None else ids
        if len(ids) >= 2:
            # the rule runs on the targets only: a prepended EOS-as-BOS is not "the first EOS"
            weights = eos_weights(torch.tensor(ids[1:], dtype=torch.long), judge.eos_id).tolist()
            rows.extend(_windows(ids, weights, judge.max_len))
    return rows


@torch.no_grad()
def generative_perplexity_of_ids(id_lists: Sequence[Sequence[int]], judge: Judge, *, batch_size: int = 8,
                                 max_len: int | None = None, progress: bool = True) -> dict:
    """``generative_perplexity`` on texts already encoded by ``judge.encode``; ``progress=False`` hides the
    bar (a caller scoring one text at a time keeps its own console quiet)."""
    rows = sorted(scored_sequences(id_lists, judge, max_len=max_len), key=lambda r: -len(r[0]))
    nll_sum, weight_sum = 0.0, 0.0
    batches = range(0, len(rows), batch_size)
    for start in tqdm(batches, desc="gen ppl", total=len(batches), dynamic_ncols=True, leave=False,
                      disable=not progress):
        chunk = rows[start : start + batch_size]
        T = len(chunk[0][0])
        # right padding: the judge is causal, so a pad never changes the logits of the tokens before it
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        w = torch.zeros(len(chunk), T - 1, dtype=torch.float64)
        for b, (ids, weights) in enumerate(chunk):
            x[b, : len(ids)] = torch.tensor(ids)
            w[b, : len(weights)] = torch.tensor(weights, dtype=torch.float64)
        x, w = x.to(judge.device), w.to(judge.device)
        # float32 log-softmax whatever the judge's dtype: bf16 logits lose ~2 digits of NLL
        log_p = F.log_softmax(judge.logits(x)[:, :-1].float(), dim=-1)
        nll = -log_p.gather(-1, x[:, 1:, None]).squeeze(-1).double()
        # where, not multiply: a pad target may sit on a -inf column (inf * 0 = nan)
        batch_nll = torch.where(w > 0, w * nll, torch.zeros_like(nll)).sum().item()
        if not math.isfinite(batch_nll):
            raise NonFiniteError(f"judge {judge.name} gives a non-finite NLL ({batch_nll}) to {len(chunk)} of the "
                                 "texts: its logits hold NaN/inf; nothing was written")
        nll_sum += batch_nll
        weight_sum += w.sum().item()
    if weight_sum == 0:
        raise ValueError("no token to score: every text is empty after tokenisation by the judge")
    nll = nll_sum / weight_sum
    return {"gen_ppl": math.exp(nll), "nll": nll, "tokens": int(round(weight_sum))}


def generative_perplexity(texts: Sequence[str], judge: Judge, *, batch_size: int = 8,
                          max_len: int | None = None) -> dict:
    """Token-weighted generative perplexity of ``texts`` under ``judge`` (module docstring).

    ``max_len`` truncates each text to its first ``max_len`` judge tokens (None: keep all; texts
    longer than the judge's context are scored in windows). Returns {gen_ppl, nll (nats per
    scored token), tokens (number of scored tokens)}.
    """
    return generative_perplexity_of_ids([judge.encode(t) for t in texts], judge, batch_size=batch_size,
                                        max_len=max_len)
