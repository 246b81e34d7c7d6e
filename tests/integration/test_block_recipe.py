"""The CPU block-diffusion recipe end to end at tiny scale, through the command lines only:
dlm-train (AR) -> dlm-convert to HF -> dlm-convert back as a block model -> dlm-train (block
diffusion, init_from) -> dlm-eval-ppl, dlm-sample with block samplers -> dlm-bench block."""

import json

import pytest
from cli_helpers import run_cli

pytestmark = pytest.mark.slow


def test_block_recipe_end_to_end(tmp_path):
    ar = run_cli("dlm-train", "experiment=block_cpu_ar", "debug=tiny", "model.max_seq_len=96",
                 f"run_dir={tmp_path}/ar", cwd=tmp_path)["model_dir"]
    hf = run_cli("dlm-convert", f"src={ar}", f"dst={tmp_path}/ar_hf", "direction=to_hf", cwd=tmp_path)
    assert hf["direction"] == "to_hf"
    conv = run_cli("dlm-convert", f"src={tmp_path}/ar_hf", f"dst={tmp_path}/converted", "direction=to_dlm",
                   "attention=block_causal", "block_size=4", cwd=tmp_path)
    assert conv["direction"] == "to_dlm"
    block = run_cli("dlm-train", "experiment=block_cpu_adapt", "debug=tiny", f"init_from={tmp_path}/converted",
                    f"run_dir={tmp_path}/block", cwd=tmp_path)
    assert block["kind"] == "block"
    ppl = run_cli("dlm-eval-ppl", f"model={block['model_dir']}", "data=pydoc", "num_samples=2", "max_tokens=2000",
                  cwd=tmp_path)
    assert ppl["ppl"] > 1
    for sampler in ("block_static", "block_threshold", "block_nocache"):
        out = run_cli("dlm-sample", f"model={block['model_dir']}", f"sampler={sampler}", "num_samples=2",
                      "length=24", f"out={tmp_path}/{sampler}.jsonl", cwd=tmp_path)
        assert out["samples"] == 2
    bench = run_cli("dlm-bench", "block", f"ar_hf={tmp_path}/ar_hf", f"block_model={block['model_dir']}",
                    "gen_tokens=[16]", "prompt_tokens=8", f"ppl.ar_model={ar}", "ppl.max_tokens=2000",
                    "ppl.num_samples=2", "ppl.seq_len=32", f"out={tmp_path}/block.json", cwd=tmp_path)
    report = json.loads((tmp_path / "block.json").read_text())
    assert bench["rows"] == 4 and {r["decoder"] for r in report["rows"]} >= {"ar_hf_generate", "block_cached_static"}
    static = {r["decoder"]: r for r in report["rows"]}
    # the cached and uncached decoders produce the same text under greedy decoding
    assert static["block_cached_static"]["example"] == static["block_nocache_static"]["example"]
    assert report["perplexity"]["block_ppl_bound"] > 1
