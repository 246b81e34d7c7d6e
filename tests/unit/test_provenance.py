"""Every result JSON records its provenance (dlm.io.provenance): dlm version, git revision, seed, the
sampler / method settings and the model fingerprint; the fingerprint tells weights apart."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dlm.data.tokenizers.char import CharTokenizer
from dlm.eval.gen_job import eval_gen_file
from dlm.eval.model_dir import eval_ppl_model_dir
from dlm.eval.sample_job import sample_to_jsonl
from dlm.io import provenance as prov
from dlm.io.model_dir import load_model_dir, save_model_dir
from dlm.io.record import Family
from dlm.io.schedule_dir import denoiser_fingerprint
from dlm.io.spec import build
from dlm.samplers.ancestral import AncestralSampler

KEYS = {"dlm_version", "git_rev", "git_dirty", "seed", "settings", "model_fingerprint", "hub"}
SCHEDULE = {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}
REPO = Path(__file__).resolve().parents[2]


def export(path: Path, family: Family = Family.MASKED, seed: int = 0) -> Path:
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": family.attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    torch.manual_seed(seed)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=32,
                          schedule_spec=None if family is Family.AR else SCHEDULE)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prov")
    out = {"a": export(root / "a", seed=0), "b": export(root / "b", seed=1), "ar": export(root / "ar", Family.AR)}
    out["a_copy"] = Path(shutil.copytree(out["a"], root / "a_copy"))
    return out


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    return path


def ppl(model_dir: Path, text: Path, tmp: Path, seed: int = 0) -> dict:
    res = eval_ppl_model_dir(str(model_dir), dataset=str(text), source=str(text), split="test", seq_len=16,
                             num_samples=2, batch_size=4, seed=seed, device="cpu", cache_dir=tmp / "cache",
                             out=tmp / f"{model_dir.name}-{seed}.json")
    written = json.loads(Path(res["out"]).read_text())
    assert written["provenance"] == json.loads(json.dumps(res["provenance"]))  # the file holds what is returned
    return written


def test_eval_ppl_json_records_provenance_and_fingerprints_tell_weights_apart(dirs, text, tmp_path):
    a, b, a_copy = (ppl(dirs[k], text, tmp_path)["provenance"] for k in ("a", "b", "a_copy"))
    assert set(a) == KEYS and a["dlm_version"] == "0.1.0" and a["seed"] == 0
    assert a["settings"]["method"] == "nelbo_bound" and a["settings"]["t_samples"] == 2
    assert a["model_fingerprint"] != b["model_fingerprint"]  # other weights
    assert a["model_fingerprint"] == a_copy["model_fingerprint"]  # the same weights in another directory
    assert ppl(dirs["a"], text, tmp_path, seed=3)["provenance"]["seed"] == 3
    assert ppl(dirs["ar"], text, tmp_path)["provenance"]["seed"] is None  # exact: no random draw


def test_one_changed_weight_changes_the_fingerprint(dirs):
    model = load_model_dir(dirs["a"]).model
    before = prov.model_fingerprint(model)
    assert before == denoiser_fingerprint(model)  # one function: what an LSD schedule records for its denoiser
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert prov.model_fingerprint(model) != before


def test_sample_summary_and_eval_gen_json_record_provenance(dirs, tmp_path):
    sampler = AncestralSampler(num_steps=3)
    summary = sample_to_jsonl(str(dirs["a"]), sampler, num_samples=2, length=8, seed=5, device="cpu",
                              out=tmp_path / "s.jsonl")
    p = summary["provenance"]
    assert set(p) == KEYS and p["seed"] == 5
    assert p["settings"]["class"] == "dlm.samplers.ancestral.AncestralSampler" and p["settings"]["num_steps"] == 3
    assert p["model_fingerprint"] == prov.model_fingerprint(load_model_dir(dirs["a"]).model)
    json.dumps(summary)  # printed as JSON by dlm-sample
    gen = json.loads(Path(eval_gen_file(tmp_path / "s.jsonl", str(dirs["ar"]), device="cpu")["out"]).read_text())
    g = gen["provenance"]
    assert set(g) == KEYS and g["settings"]["judge"] == str(dirs["ar"])
    assert g["model_fingerprint"] == prov.model_fingerprint(load_model_dir(dirs["ar"]).model)


def test_bench_results_record_provenance(tmp_path):
    from dlm.bench.dkv_speed import bench_dkv
    from dlm.bench.sample_speed import bench_sample

    model = {"_target_": "dlm.models.transformer.Transformer", "dim": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}
    samplers = {"ancestral_4": {"_target_": "dlm.samplers.ancestral.AncestralSampler", "num_steps": 4}}
    bench_sample(model=model, samplers=samplers, grid=[[8, 1]], baseline="ancestral_4", vocab_size=12, threads=1,
                 seed=2, out=str(tmp_path / "sample.json"), plot=None)
    p = json.loads((tmp_path / "sample.json").read_text())["provenance"]
    assert set(p) == KEYS and p["seed"] == 2 and p["settings"]["samplers"] == samplers and p["model_fingerprint"]
    bench_dkv(model=model, vocab_size=12, grid=[[8, 1]], caches={}, rounds=1, threads=1, seed=4,
              out=str(tmp_path / "dkv.json"))
    p = json.loads((tmp_path / "dkv.json").read_text())["provenance"]
    assert set(p) == KEYS and p["seed"] == 4 and p["settings"]["grid"] == [[8, 1]]
    # the benchmarks that train or load large models are too slow for the unit tier: their writers are checked
    # to build the same object
    for name in ("train_step", "block_speed", "edlm_quality"):
        assert '"provenance": provenance(' in (REPO / "dlm" / "bench" / f"{name}.py").read_text(), name


def test_lm_eval_model_record_holds_provenance(dirs):
    pytest.importorskip("lm_eval")
    from dlm.eval.harness import DlmLM

    info = DlmLM(str(dirs["ar"]), device="cpu").get_model_info()["dlm"]
    assert set(info["provenance"]) == KEYS
    assert info["model_fingerprint"] == info["provenance"]["model_fingerprint"] == prov.model_fingerprint(
        load_model_dir(dirs["ar"]).model)


def test_git_revision_is_the_checkout_of_dlm_or_none_never_an_error(monkeypatch):
    prov.git_state.cache_clear()
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0 and (REPO / ".git").exists():
            assert prov.git_revision() == head.stdout.strip()

        def another_repo(args, **kw):  # an installed dlm inside some other project's git checkout
            return subprocess.CompletedProcess(args, 0, stdout="/somewhere/else\n" + "f" * 40 + "\n", stderr="")

        prov.git_state.cache_clear()
        monkeypatch.setattr(prov.subprocess, "run", another_repo)
        assert prov.git_state() == (None, None)

        def no_git(args, **kw):
            raise FileNotFoundError("git")

        prov.git_state.cache_clear()
        monkeypatch.setattr(prov.subprocess, "run", no_git)
        assert prov.git_state() == (None, None)
    finally:
        prov.git_state.cache_clear()


def test_describe_keeps_settings_and_leaves_networks_out():
    class Holder:
        def __init__(self) -> None:
            self.num_steps, self.grid, self.net = 4, torch.tensor([1.0, 0.5]), torch.nn.Linear(2, 2)
            self.big, self._private = torch.zeros(10_000), 1

    d = prov.describe(Holder())
    assert d["num_steps"] == 4 and d["grid"] == [1.0, 0.5] and "net" not in d and "_private" not in d
    assert "big" not in d and d["class"].endswith("Holder")
