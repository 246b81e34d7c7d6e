"""The CPU demo: RADD vs an AR baseline of the same size, trained for the same steps.

Corpus: the English reference documentation embedded in every CPython install
(``pydoc_data.topics``), so the demo needs no download and no data folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra import compose
from omegaconf import DictConfig

from dlm.eval.model_dir import eval_ppl_model_dir
from dlm.io.model_dir import load_model_dir
from dlm.io.record import Family
from dlm.samplers.ancestral import AncestralSampler
from dlm.samplers.autoregressive import AutoregressiveSampler
from dlm.train.run import run

# the demo's two families: the AR baseline decodes left to right, RADD with the ancestral sampler
DEMO_SAMPLERS = {
    Family.AR: lambda *, num_steps, schedule: AutoregressiveSampler(),
    Family.MASKED: lambda *, num_steps, schedule: AncestralSampler(num_steps=num_steps, schedule=schedule),
}


def _decode(tokenizer, ids: list[int]) -> str:
    if tokenizer.eos_id is not None and tokenizer.eos_id in ids[1:]:
        ids = ids[: ids.index(tokenizer.eos_id, 1)]
    return tokenizer.decode(ids)


def run_demo(cfg: DictConfig, conf_dir: Path) -> dict:
    start = time.perf_counter()
    root = Path(cfg.run_root)
    runs = {}
    for tag, experiment in (("radd", "demo_radd"), ("ar", "demo_ar")):
        print(f"\n=== training {tag.upper()} ({experiment}, {cfg.steps} steps) -> {root / tag}", flush=True)
        train_cfg = compose("train", overrides=[f"experiment={experiment}", f"run_dir={root / tag}",
                                                f"trainer.max_steps={cfg.steps}", f"seed={cfg.seed}",
                                                *cfg.overrides])
        runs[tag] = run(train_cfg)

    results, samples = {}, {}
    for tag, summary in runs.items():
        model_dir = summary["model_dir"]
        print(f"\n=== evaluating {tag.upper()} on held-out text", flush=True)
        results[tag] = eval_ppl_model_dir(model_dir, dataset="pydoc", source="pydoc", split="validation",
                                          num_samples=cfg.eval_samples, seed=cfg.seed)
        loaded = load_model_dir(model_dir)
        bos = torch.tensor([loaded.tokenizer.bos_id])
        sampler = DEMO_SAMPLERS[loaded.family](num_steps=cfg.sample_steps, schedule=loaded.schedule)
        out = sampler(loaded.model, batch_size=cfg.num_print, length=cfg.sample_length, prompt=bos,
                      generator=torch.Generator().manual_seed(cfg.seed))
        samples[tag] = [_decode(loaded.tokenizer, row) for row in out.tokens.tolist()]

    print("\n=== held-out perplexity (per character, same tokens scored by both models)")
    print(f"{'model':<6} {'ppl':>8} {'nll':>8} {'± s.e.':>8} {'method':>12} {'tokens':>8}")
    for tag, r in results.items():
        print(f"{tag.upper():<6} {r['ppl']:>8.3f} {r['nll']:>8.4f} {r['nll_stderr']:>8.4f} "
              f"{r['method']:>12} {r['tokens']:>8}")
    for tag, texts in samples.items():
        print(f"\n=== {tag.upper()} samples")
        for text in texts:
            print("---\n" + text.strip()[:400])
    print(f"\nrun directory: {root}  (checkpoints in */checkpoints, CSV logs in */logs, "
          f"exported models in */model)")
    return {
        "radd_ppl": results["radd"]["ppl"], "ar_ppl": results["ar"]["ppl"],
        "radd_nll": results["radd"]["nll"], "ar_nll": results["ar"]["nll"],
        "radd_nll_stderr": results["radd"]["nll_stderr"],
        "radd_model_dir": runs["radd"]["model_dir"], "ar_model_dir": runs["ar"]["model_dir"],
        "run_dir": str(root), "steps": cfg.steps, "seconds": round(time.perf_counter() - start, 1),
    }
