"""Block decoding speed and quality against AR decoding of the original model, one run, one model.

Rows (each generates ``gen_tokens`` after the same prompts, greedy, batch 1):
  (a) ``ar_hf_generate``: the AR model in Hugging Face format, ``transformers`` ``generate`` with
      its KV cache (the baseline every ratio is taken against);
  (b) ``block_cached_static``: block decoding with the exact KV cache, one token per step;
  (c) ``block_cached_threshold``: the same with SDAR's dynamic confidence threshold;
  (d) ``block_nocache_static``: (b) without the cache (prefix recomputed every call).
Quality: perplexity of the generated tokens under the AR model (teacher forcing, given the
prompt), and the mean per-sequence unigram entropy (nats) to expose repetition. Optionally the
perplexity bound of the block model and the exact perplexity of the AR model on held-out text.

One rule for every decoder, in generation and in scoring: EOS is never generated (HF ``generate``
with ``min_new_tokens`` = all new tokens; dlm decoders read logits whose EOS column is -inf,
``NoEOS``), and the AR judge scores each token under its distribution *without* EOS (the EOS column
removed before the softmax). Scoring a banned-EOS text with EOS allowed puts the judge's EOS mass
into every NLL: past its training length the AR model's greedy text then read gen-PPL 717, while the
same tokens score 2.6 without the EOS column. Lengths: ``gen_tokens`` 112 keeps prompt + text inside
the 128-token training rows of the CPU recipe for both models; 512 puts both beyond them.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from dlm.io.atomic import write_text_atomic
from dlm.io.model_dir import load_model_dir
from dlm.io.provenance import provenance
from dlm.io.spec import build


class NoEOS(nn.Module):
    """A dlm denoiser whose logits give EOS probability zero (column set to -inf): the bench's
    generation rule for dlm decoders, as ``min_new_tokens`` is for HF ``generate``. Everything else
    (the declared contract, the layer count a KV cache is sized by) is the wrapped model's."""

    def __init__(self, model: nn.Module, eos_id: int) -> None:
        super().__init__()
        self.model, self.eos_id = model, eos_id

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # a proxy: what the wrapper does not define is the model's
            return getattr(self.model, name)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.model(*args, **kwargs)
        if kwargs.get("return_hidden"):
            return out
        return out.index_fill(-1, torch.tensor([self.eos_id], device=out.device), float("-inf"))


def _hf_generate(model, prompt: torch.Tensor, gen_tokens: int) -> torch.Tensor:
    # min_new_tokens = every new token: EOS is never generated (the bench's rule for all decoders)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=gen_tokens,
                         min_new_tokens=gen_tokens, do_sample=False, use_cache=True, pad_token_id=0)
    return out[:, prompt.shape[1]:]


@torch.no_grad()
def _ar_nll(model, prompt: torch.Tensor, generated: torch.Tensor, eos_id: int) -> tuple[float, int]:
    """Sum of -log p(generated | prompt, no EOS) under the HF AR model (EOS column removed before the
    softmax: the texts were generated with EOS banned), and the token count."""
    ids = torch.cat([prompt, generated], dim=1)
    logits = model(ids).logits[:, prompt.shape[1] - 1 : -1].float()
    logits = logits.index_fill(-1, torch.tensor([eos_id]), float("-inf"))
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), generated.reshape(-1),
                                            reduction="sum")
    return float(nll), generated.numel()


def _entropy(tokens: torch.Tensor) -> float:
    counts = torch.bincount(tokens.reshape(-1)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def _prompts(loaded, texts: list[str], prompt_tokens: int) -> list[torch.Tensor]:
    from dlm.eval.sample_job import prompt_ids

    out = []
    for text in texts:
        ids = prompt_ids(loaded.tokenizer, text, family=loaded.family)[:prompt_tokens]  # BOS first, as in training
        if len(ids) < prompt_tokens:
            raise ValueError(f"prompt text {text[:40]!r} has fewer than prompt_tokens={prompt_tokens} tokens")
        out.append(torch.tensor([ids]))
    return out


def bench_block(*, ar_hf: str, block_model: str, samplers: dict, prompts: list[str], prompt_tokens: int = 16,
                gen_tokens: list[int] = (112, 512), threads: int = 2, seed: int = 0, rounds: int = 3,
                ppl: dict | None = None, out: str = "benchmarks/results/block.json") -> dict:
    """Tokens/s (median of ``rounds`` interleaved rounds), NFE and quality per row; ratios against
    ``ar_hf_generate`` at the same length."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    hf = AutoModelForCausalLM.from_pretrained(ar_hf, dtype=torch.float32).eval()
    loaded = load_model_dir(block_model)
    eos_id = loaded.tokenizer.eos_id
    if hf.generation_config.eos_token_id not in (None, eos_id):
        raise ValueError(f"ar_hf's EOS id {hf.generation_config.eos_token_id} differs from block_model's {eos_id}: "
                         "the two models must share the tokenizer")
    decoded = NoEOS(loaded.model, eos_id)
    prompt_ids = _prompts(loaded, prompts, prompt_tokens)
    rows = []
    for n in gen_tokens:
        runners = {name: (build(spec) if spec is not None else None)
                   for name, spec in {"ar_hf_generate": None, **samplers}.items()}
        # rounds interleave the decoders (round r times each once over every prompt); the median
        # round is reported, so a burst of machine noise cannot land on one decoder only.
        # Decoding is greedy and seeded: every round produces the same tokens, scored once.
        times: dict[str, list[float]] = {name: [] for name in runners}
        first: dict[str, dict] = {}
        for r in range(rounds):
            for name, sampler in runners.items():
                seconds, nfe, nll, count, ent, texts = 0.0, 0, 0.0, 0, [], []
                for i, prompt in enumerate(prompt_ids):
                    if sampler is None:
                        _hf_generate(hf, prompt, 4)  # warm-up outside the timed call
                        start = time.perf_counter()
                        with torch.no_grad():
                            generated = _hf_generate(hf, prompt, n)
                        seconds += time.perf_counter() - start
                        nfe += n
                    else:
                        g = torch.Generator().manual_seed(seed + i)
                        res = sampler(decoded, batch_size=1, length=prompt.shape[1] + n, prompt=prompt,
                                      generator=g)
                        seconds += res.seconds
                        nfe += res.nfe
                        generated = res.tokens[:, prompt.shape[1]:]
                    if r == 0:
                        assert not (generated == eos_id).any(), name  # the rule held
                        s, c = _ar_nll(hf, prompt, generated, eos_id)
                        nll, count = nll + s, count + c
                        ent.append(_entropy(generated))
                        texts.append(loaded.tokenizer.decode(generated[0].tolist()))
                times[name].append(seconds)
                if r == 0:
                    first[name] = {"nfe_per_token": nfe / count, "gen_ppl_under_ar": math.exp(nll / count),
                                   "entropy": statistics.mean(ent), "example": texts[0][:160], "tokens": count}
        for name in runners:
            q = first[name]
            seconds = statistics.median(times[name])
            row = {"decoder": name, "gen_tokens": n, "tokens_per_s": q["tokens"] / seconds, "seconds": seconds,
                   "round_seconds": times[name], "nfe_per_token": q["nfe_per_token"],
                   "gen_ppl_under_ar": q["gen_ppl_under_ar"], "entropy": q["entropy"], "example": q["example"]}
            rows.append(row)
            print(f"n={n:<4} {name:<26} {row['tokens_per_s']:8.1f} tok/s  nfe/token {row['nfe_per_token']:.3f}  "
                  f"gen-ppl {row['gen_ppl_under_ar']:8.2f}  entropy {row['entropy']:.2f}", flush=True)
    base = {r["gen_tokens"]: r["tokens_per_s"] for r in rows if r["decoder"] == "ar_hf_generate"}
    nocache = {r["gen_tokens"]: r["tokens_per_s"] for r in rows if r["decoder"] == "block_nocache_static"}
    for r in rows:
        r["speedup_vs_ar"] = r["tokens_per_s"] / base[r["gen_tokens"]]
        if r["gen_tokens"] in nocache:
            r["speedup_vs_nocache"] = r["tokens_per_s"] / nocache[r["gen_tokens"]]
    report = {"task": "block", "ar_hf": ar_hf, "block_model": block_model, "threads": threads,
              "torch": torch.__version__, "eos_rule": "banned in generation, removed from the judge's softmax",
              "prompt_tokens": prompt_tokens, "prompts": len(prompts), "rounds": rounds, "rows": rows,
              "provenance": provenance(seed=seed, settings={"samplers": samplers, "gen_tokens": list(gen_tokens),
                                                            "prompt_tokens": prompt_tokens, "rounds": rounds},
                                       model={"block_model": loaded.model, "ar_hf": hf}, source=loaded.path)}
    if ppl:
        report["perplexity"] = _perplexities(block_model=block_model, **ppl)
    path = Path(out)
    write_text_atomic(path, json.dumps(report, indent=2))
    print(f"{'decoder':<26} {'n':>4} {'tok/s':>8} {'x AR':>6} {'x nocache':>9} {'gen-ppl':>8}")
    for r in rows:
        print(f"{r['decoder']:<26} {r['gen_tokens']:>4} {r['tokens_per_s']:>8.1f} {r['speedup_vs_ar']:>6.2f} "
              f"{r.get('speedup_vs_nocache', float('nan')):>9.2f} {r['gen_ppl_under_ar']:>8.2f}")
    return {"out": str(path), "rows": len(rows), **({"perplexity": report["perplexity"]} if ppl else {})}


def _perplexities(*, ar_model: str, block_model: str, source: str, split: str, seq_len: int,
                  max_tokens: int | None, num_samples: int) -> dict:
    """Exact AR perplexity and the block model's NELBO bound on the same held-out rows."""
    from dlm.eval.model_dir import eval_ppl_model_dir

    common = dict(dataset=source, source=source, split=split, seq_len=seq_len, max_tokens=max_tokens,
                  num_samples=num_samples, method="quadrature", device="cpu")
    ar = eval_ppl_model_dir(ar_model, out=Path(ar_model) / "eval" / "bench_block.json", **common)
    block = eval_ppl_model_dir(block_model, out=Path(block_model) / "eval" / "bench_block.json", **common)
    return {"ar_exact_ppl": ar["ppl"], "block_ppl_bound": block["ppl"], "ratio": block["ppl"] / ar["ppl"],
            "tokens": ar.get("tokens"), "source": source, "split": split}
