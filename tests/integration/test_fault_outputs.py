"""Fault tests for outputs: a process SIGKILLed at the worst moment (just before its finished output is
renamed onto the final name) leaves no partial output under that name and the previous result intact.

The kill is deterministic: a ``sitecustomize`` on PYTHONPATH wraps ``dlm.io.atomic._publish`` (the one
place every output is put in place) and kills the process when it is about to publish the named path.
Covers the model export at the end of dlm-train, dlm-sample's samples file and dlm-eval-ppl's result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from cli_helpers import BIN
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

KILLER = """
import os, signal
target = os.environ.get("KILL_AT_PUBLISH")
if target:
    import dlm.io.atomic as atomic
    publish = atomic._publish

    def killing(tmp, path, **kw):
        if path.name == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return publish(tmp, path, **kw)

    atomic._publish = killing
"""
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def run(root: Path, argv: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "killer"), os.environ.get("PYTHONPATH")]))}
    if kill_at:
        env["KILL_AT_PUBLISH"] = kill_at
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    if kill_at:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outputs")
    (root / "killer").mkdir()
    (root / "killer" / "sitecustomize.py").write_text(KILLER)
    (root / "text.txt").write_text(TEXT)
    run(root, ["dlm-train", "debug=tiny", "trainer.max_steps=2", f"run_dir={root / 'run'}"])
    return root


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_kill_while_exporting_keeps_the_previous_model_dir(root):
    model = root / "run" / "model"
    before = load_file(model / "model.safetensors")
    assert json.loads((model / "model.json").read_text())["step"] == 2
    run(root, ["dlm-train", "debug=tiny", "trainer.max_steps=4", f"run_dir={root / 'run'}", "ckpt_path=last"],
        kill_at="model")
    assert json.loads((model / "model.json").read_text())["step"] == 2  # the previous export, whole
    after = load_file(model / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert "model" in visible(root / "run")


def test_kill_while_writing_samples_leaves_no_samples_file(root):
    out = root / "samples.jsonl"
    run(root, ["dlm-sample", f"model={root / 'run' / 'model'}", "num_samples=2", "length=16",
               "sampler.num_steps=4", f"out={out}"], kill_at=out.name)
    assert out.name not in visible(root)


def test_kill_while_writing_an_eval_result_keeps_the_previous_result(root):
    out = root / "ppl.json"
    argv = ["dlm-eval-ppl", f"model={root / 'run' / 'model'}", f"data={root / 'text.txt'}", "num_samples=1",
            "device=cpu", f"cache_dir={root / 'cache'}", f"out={out}"]
    run(root, argv)
    before = out.read_text()
    run(root, argv, kill_at=out.name)  # the same settings again: it would replace the result
    assert out.read_text() == before
