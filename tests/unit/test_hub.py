"""Hugging Face Hub ids as model paths (dlm.io.hub) and dlm-push (dlm.io.push, dlm.io.model_card), with no network.

The Hub is stood in for by the HF cache layout in tmp_path (``models--org--name/snapshots/<commit>/`` and
``refs/<branch>``), read by the real ``huggingface_hub.snapshot_download`` in offline mode; the online
path (revision resolved to a commit, repo / revision not found) and the upload go through fakes at the
one seam (``huggingface_hub.HfApi``, ``snapshot_download``). A closed local port stands in for an
unreachable Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

import dlm
from dlm.data.tokenizers.char import CharTokenizer
from dlm.errors import CheckpointError, ConfigError, OfflineError
from dlm.io.hub import hub_origin, parse_hub_id, resolve_model_path
from dlm.io.model_dir import save_model_dir
from dlm.io.provenance import model_fingerprint
from dlm.io.push import push_model_dir
from dlm.io.record import Family
from dlm.io.spec import build

BIN = Path(sys.executable).parent
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
SCHEDULE = {"_target_": "dlm.diffusion.schedule.LogLinearSchedule"}


def export(path: Path, seed: int = 0, family: Family = Family.MASKED) -> Path:
    tok = CharTokenizer()
    spec = {"_target_": "dlm.models.transformer.Transformer", "dim": 32, "n_layers": 1, "n_heads": 2,
            "max_seq_len": 32, "attention": family.attention, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id}
    torch.manual_seed(seed)
    return save_model_dir(path, model=build(spec), model_spec=spec, tokenizer=tok, family=family, seq_len=32,
                          schedule_spec=None if family is Family.AR else SCHEDULE, step=7,
                          config_yaml="seed: 0\nbatch_size: 4\noptim:\n  lr: 0.001\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub_models")
    return {"a": export(root / "a", seed=0), "b": export(root / "b", seed=1), "ar": export(root / "ar", 2, Family.AR)}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline HF cache in tmp_path; ``hub(repo_id, src, commit, *refs)`` publishes ``src`` as a snapshot."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def publish(repo_id: str, src: Path, commit: str, *refs: str) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        shutil.copytree(src, snapshot)
        for ref in refs:
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / ref).write_text(commit)
        return snapshot

    publish.cache = cache
    return publish


def logits_of(loaded) -> torch.Tensor:
    x = torch.arange(16).reshape(1, 16) % loaded.model.mask_id
    with torch.no_grad():
        return loaded.model(x, torch.full((1,), 0.5))


# ---------------------------------------------------------------- loading by id
def test_load_by_id_from_the_cache_gives_bitwise_the_logits_of_the_local_dir(hub, models):
    snapshot = hub("org/tiny", models["a"], COMMIT_A, "main")
    by_id, local = dlm.load("org/tiny"), dlm.load(str(models["a"]))
    assert by_id.path == snapshot and hub_origin(by_id.path) == {"repo_id": "org/tiny", "revision": COMMIT_A}
    assert torch.equal(logits_of(by_id), logits_of(local))
    assert by_id.record == local.record


def test_revision_pinning_picks_that_snapshot(hub, models):
    hub("org/tiny", models["a"], COMMIT_A, "v1")
    hub("org/tiny", models["b"], COMMIT_B, "main")
    fa, fb = (model_fingerprint(dlm.load(str(models[k])).model) for k in "ab")
    assert fa != fb
    assert model_fingerprint(dlm.load("org/tiny").model) == fb  # the default branch
    assert model_fingerprint(dlm.load("org/tiny@v1").model) == fa  # a tag / branch in the id
    assert model_fingerprint(dlm.load("org/tiny", revision=COMMIT_A).model) == fa  # a commit as revision=
    with pytest.raises(ConfigError, match="pins revision 'v1' but revision='main'"):
        dlm.load("org/tiny@v1", revision="main")
    with pytest.raises(OfflineError, match=r"org/tiny@nope is neither a local directory nor in the local Hugging Face cache.*--revision nope"):
        dlm.load("org/tiny@nope")


def test_offline_without_the_snapshot_fails_at_once_naming_the_local_alternative(hub):
    start = time.perf_counter()
    with pytest.raises(OfflineError) as e:
        dlm.load("org/missing")
    assert time.perf_counter() - start < 5
    msg = str(e.value)
    assert "\n" not in msg and "org/missing" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download org/missing --local-dir <dir>" in msg and "model=<dir>" in msg


def cli(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there, so a connection is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dlm_sample_with_an_unknown_id_offline_exits_2_with_one_line(tmp_path):
    proc = cli("dlm-sample", "model=org/missing", f"out={tmp_path / 's.jsonl'}", cwd=tmp_path,
               env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("dlm-sample: error: org/missing is neither a local directory nor in the local Hugging Face "
                           "cache, and HF_HUB_OFFLINE=1")
    assert "--local-dir <dir>" in line and not (tmp_path / "s.jsonl").exists()


def test_an_unreachable_hub_falls_back_to_the_cache_else_one_line(tmp_path, models):
    """HF_HUB_OFFLINE unset, the endpoint a closed local port: a cached snapshot loads, a missing one is refused."""
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HUB_CACHE": str(tmp_path)}
    repo = tmp_path / "models--org--tiny"
    shutil.copytree(models["a"], repo / "snapshots" / COMMIT_A)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_A)
    start = time.perf_counter()
    proc = cli("dlm-sample", "model=org/missing", f"out={tmp_path / 's.jsonl'}", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and time.perf_counter() - start < 60, proc.stderr
    assert "org/missing is neither a local directory nor in the local Hugging Face cache, and the Hub is " \
           "unreachable (ConnectError)" in proc.stderr
    proc = cli("dlm-sample", "model=org/tiny", "num_samples=1", "length=8", "sampler.num_steps=2",
               f"out={tmp_path / 's.jsonl'}", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["provenance"]["hub"] == {"repo_id": "org/tiny", "revision": COMMIT_A}


def test_a_local_directory_wins_over_a_same_named_id(hub, models, tmp_path, monkeypatch):
    hub("org/tiny", models["a"], COMMIT_A, "main")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(models["b"], tmp_path / "org" / "tiny")
    loaded = dlm.load("org/tiny")
    assert loaded.path == Path("org/tiny") and hub_origin(loaded.path) is None
    assert model_fingerprint(loaded.model) == model_fingerprint(dlm.load(str(models["b"])).model)


def test_paths_are_never_sent_to_the_hub(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise AssertionError("sent to the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "HfApi", refuse)
    for spec in ("./org/name", "/org/name", "~/org/name", "runs/x/model", "model", "org/name/"):
        assert parse_hub_id(spec) is None, spec
        assert resolve_model_path(spec) == Path(spec)
    with pytest.raises(CheckpointError, match="does not exist"):
        dlm.load("./org/name")
    with pytest.raises(ConfigError, match="revision='main' applies to a Hugging Face Hub repo id"):
        resolve_model_path(str(tmp_path), revision="main")
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0") and parse_hub_id("org/name") == ("org/name", None)


def test_a_snapshot_naming_a_non_dlm_target_is_refused(hub, models, tmp_path):
    src = tmp_path / "evil"
    shutil.copytree(models["a"], src)
    meta = json.loads((src / "model.json").read_text())
    meta["model"]["_target_"] = "os.system"
    (src / "model.json").write_text(json.dumps(meta))
    hub("org/evil", src, COMMIT_A, "main")
    with pytest.raises(CheckpointError, match="refusing to build 'os.system': model directories may only name dlm"):
        dlm.load("org/evil")


def test_a_snapshot_that_is_not_a_dlm_directory_is_refused(hub, tmp_path):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text("{}")
    hub("org/hf-model", src, COMMIT_A, "main")
    with pytest.raises(ConfigError, match="org/hf-model holds no model.json, so it is not a dlm directory.*dlm-convert"):
        dlm.load("org/hf-model")


def test_ids_work_for_tokenizer_and_eval_paths(hub, models, tmp_path):
    """tokenizer_from= and dlm-eval-ppl's model= resolve ids too; the result records the repo and commit."""
    from dlm.eval.model_dir import eval_ppl_model_dir
    from dlm.io.tokenizer_files import tokenizer_of

    snapshot = hub("org/tiny", models["a"], COMMIT_A, "main")
    assert tokenizer_of("org/tiny").fingerprint() == CharTokenizer().fingerprint()
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    res = eval_ppl_model_dir("org/tiny", dataset=str(text), source=str(text), split="test", seq_len=16, num_samples=2,
                             batch_size=4, device="cpu", cache_dir=tmp_path / "c")
    assert Path(res["out"]).parent == snapshot / "eval" and res["settings"]["model"] == str(snapshot.resolve())
    assert res["provenance"]["hub"] == {"repo_id": "org/tiny", "revision": COMMIT_A}


def test_ids_work_for_energy_and_schedule_paths(hub, models, tmp_path):
    """energy= / sampler.energy.path= and sampler.schedule.path= resolve ids through the same function."""
    from dlm.io.energy_dir import load_energy
    from dlm.io.schedule_dir import read_schedule_dir, save_schedule_dir
    from dlm.models.energy import ARResidualEnergy

    hub("org/tiny", models["a"], COMMIT_A, "main")
    hub("org/ar", models["ar"], COMMIT_B, "main")
    energy = load_energy("org/ar", denoiser="org/tiny")
    assert isinstance(energy, ARResidualEnergy)
    sched = save_schedule_dir(tmp_path / "sched", state={"logit_scales": torch.ones(2)},
                              meta={"num_steps": 2, "learn_grid": False, "t_min": 0.0, "fingerprint": "0" * 16})
    snapshot = hub("org/sched", sched, COMMIT_A, "main")
    assert read_schedule_dir("org/sched").path == snapshot
    hub("org/not-sched", models["a"], COMMIT_A, "main")
    with pytest.raises(ConfigError, match="org/not-sched holds no schedule.json"):
        read_schedule_dir("org/not-sched")


# ---------------------------------------------------------------- the online path, through fakes
def http_error(cls, status: int):
    import httpx2

    return cls(f"{status}", response=httpx2.Response(status, request=httpx2.Request("GET", "https://hub.invalid")))


@pytest.fixture
def online(monkeypatch, models):
    """Offline mode off; HfApi.model_info and snapshot_download replaced by fakes that record their calls."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls: dict[str, list] = {"info": [], "download": []}
    state = {"error": None, "files": ["model.json", "model.safetensors", "tokenizer/dlm_tokenizer.json"]}

    class FakeApi:
        def model_info(self, repo_id, *, revision=None, timeout=None):
            calls["info"].append((repo_id, revision, timeout))
            if state["error"] is not None:
                raise state["error"]
            return SimpleNamespace(sha=COMMIT_B, siblings=[SimpleNamespace(rfilename=f) for f in state["files"]])

    def fake_download(repo_id, *, revision=None, **kw):
        calls["download"].append((repo_id, revision, kw))
        return str(models["b"])

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    return SimpleNamespace(calls=calls, state=state)


def test_online_a_revision_is_resolved_to_its_commit_before_the_download(online, models):
    assert resolve_model_path("org/tiny@main") == models["b"]
    assert online.calls["info"] == [("org/tiny", "main", 10.0)]  # a short timeout: no long hang
    assert [(r, rev) for r, rev, _ in online.calls["download"]] == [("org/tiny", COMMIT_B)]


def test_online_missing_repo_revision_or_model_json_is_one_line_each(online):
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    online.state["error"] = http_error(RepositoryNotFoundError, 404)
    with pytest.raises(ConfigError, match=r"^Hugging Face Hub repo org/nope does not exist .*pass a local model"):
        resolve_model_path("org/nope")
    online.state["error"] = http_error(RevisionNotFoundError, 404)
    with pytest.raises(ConfigError, match=r"^Hugging Face Hub repo org/tiny has no revision 'v9'; pass an existing"):
        resolve_model_path("org/tiny", revision="v9")
    online.state.update(error=None, files=["config.json", "pytorch_model.bin"])
    with pytest.raises(ConfigError, match="holds no model.json"):
        resolve_model_path("org/gpt")
    assert online.calls["download"] == []  # refused from the file list, before downloading anything


# ---------------------------------------------------------------- dlm-push
@pytest.fixture
def model_with_eval(models, tmp_path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(models["a"], path)
    (path / "eval").mkdir()
    (path / "eval" / "wiki-test-0123456789.json").write_text(json.dumps(
        {"dataset": "wikitext2", "split": "test", "seq_len": 32, "method": "nelbo_bound", "t_samples": 8,
         "nll": 2.5, "nll_stderr": 0.01, "ppl": 12.1825, "tokens": 4096, "settings": {}}))
    return path


def test_push_dry_run_writes_a_card_with_the_eval_table_and_lists_the_files(model_with_eval, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # no network object is even built
    out = push_model_dir(model_with_eval, "org/tiny", dry_run=True)
    card = (model_with_eval / "README.md").read_text()
    assert out["dry_run"] and out["card_written"] and out["files"] == [
        "README.md", "config.yaml", "eval/wiki-test-0123456789.json", "model.json", "model.safetensors",
        "tokenizer/dlm_tokenizer.json"]
    assert "| wikitext2 | test | 32 | nelbo_bound (8 t) | 12.182 | 2.5000 ± 0.0100 | 4096 |" in card
    assert 'dlm.load("org/tiny")' in card and "| family | `diffusion` |" in card and "| attention | `bidirectional` |" in card
    params = sum(p.numel() for p in dlm.load(str(model_with_eval)).model.state_dict().values())
    assert f"({params:,})" in card and "`optim.lr`: `0.001`" in card and "library_name: dlm" in card


def test_push_keeps_a_hand_written_readme(model_with_eval):
    (model_with_eval / "README.md").write_text("# mine\n")
    out = push_model_dir(model_with_eval, "org/tiny", dry_run=True)
    assert not out["card_written"] and (model_with_eval / "README.md").read_text() == "# mine\n"


def test_push_refuses_what_is_not_a_model_directory_or_a_repo_id(tmp_path, model_with_eval):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ConfigError, match=r"model=.*stuff is not a dlm model directory: it lacks model.json, "
                                          r"model.safetensors, tokenizer"):
        push_model_dir(tmp_path / "stuff", "org/tiny", dry_run=True)
    with pytest.raises(ConfigError, match="is not a local directory"):
        push_model_dir(tmp_path / "nothing", "org/tiny", dry_run=True)
    with pytest.raises(ConfigError, match="repo='tiny' must be a Hugging Face Hub repo id org/name"):
        push_model_dir(model_with_eval, "tiny", dry_run=True)


def test_push_uploads_through_hfapi_with_the_settings(model_with_eval, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    class FakeApi:
        def create_repo(self, **kw):
            calls.append(("create_repo", kw))
            return "https://hub.invalid/org/tiny"

        def create_branch(self, **kw):
            calls.append(("create_branch", kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", {**kw, "files": sorted(os.listdir(kw["folder_path"]))}))
            return SimpleNamespace(oid="c0ffee", commit_url="https://hub.invalid/org/tiny/commit/c0ffee")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = push_model_dir(model_with_eval, "org/tiny", private=True, revision="dev", commit_message="first")
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][1] == {"repo_id": "org/tiny", "repo_type": "model", "private": True, "exist_ok": True}
    assert calls[1][1]["branch"] == "dev" and calls[1][1]["exist_ok"]
    upload = calls[2][1]
    assert upload["folder_path"] == str(model_with_eval) and upload["revision"] == "dev"
    assert upload["commit_message"] == "first" and "README.md" in upload["files"] and ".*" in upload["ignore_patterns"]
    assert out["commit"] == "c0ffee" and out["url"] == "https://hub.invalid/org/tiny"


def test_push_offline_is_refused_before_writing_anything(model_with_eval, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError, match="dry_run=true"):
        push_model_dir(model_with_eval, "org/tiny")
    assert not (model_with_eval / "README.md").exists()


def test_dlm_push_command_line(model_with_eval, tmp_path, monkeypatch, capsys):
    from dlm.cli import push

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["dlm-push", *args])
        try:
            push()
            return 0
        except SystemExit as e:
            return int(e.code or 0)

    assert run(f"model={model_with_eval}", "repo=org/tiny", "dry_run=true") == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dry_run"] and "README.md" in out["files"]
    (tmp_path / "empty").mkdir()
    assert run(f"model={tmp_path / 'empty'}", "repo=org/tiny", "dry_run=true") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("dlm-push: error: model=") and "lacks model.json" in line


# ---------------------------------------------------------------- the README's Hub section
def readme_hub_blocks() -> list[tuple[str, str]]:
    """(language, body) of each fenced block in the README's "Hugging Face Hub" section."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Hugging Face Hub (", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    parts = section.split("```")
    return [(p.split("\n", 1)[0].strip(), p.split("\n", 1)[1]) for p in parts[1::2]]


def test_readme_hub_section_offline_block_runs_and_network_block_is_marked(models, tmp_path):
    """The block marked ``# offline`` runs literally (from a directory holding runs/demo_radd/model) with
    HF_HUB_OFFLINE=1; every block naming a command that needs the network says so on its first line; the
    quoted offline error is what dlm-sample prints."""
    blocks = readme_hub_blocks()
    offline = [body for lang, body in blocks if lang == "bash" and body.startswith("# offline")]
    network = [body for lang, body in blocks if lang == "bash" and not body.startswith("# offline")]
    assert len(offline) == 1 and network and all(b.startswith("# needs the network") for b in network)
    shutil.copytree(models["a"], tmp_path / "runs" / "demo_radd" / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", offline[0]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'dlm.load("my-org/dlm-demo-radd")' in (tmp_path / "runs" / "demo_radd" / "model" / "README.md").read_text()
    [quoted] = [body.strip() for lang, body in blocks if lang == "text"]
    proc = subprocess.run([str(BIN / "dlm-sample"), "model=my-org/other"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == quoted
