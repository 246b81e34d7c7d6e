"""Classifier guidance through the command lines: dlm-train a block denoiser on a two-class corpus,
dlm-train a noisy classifier (objective=noisy_classifier, data=labelled) on its tokenizer, then
dlm-sample with sampler=block_guided. Guidance towards a class must raise that class's share of the
samples well above the unguided share (the denoiser alone draws the two classes about equally)."""

import json
import random

import pytest
from cli_helpers import run_cli

pytestmark = pytest.mark.slow

CLASSES = {"ab": "ab", "xy": "xy"}  # class name -> its alphabet


def doc(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def class_of(text: str) -> str | None:
    counts = {name: sum(c in alphabet for c in text) for name, alphabet in CLASSES.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else None


def test_trained_classifier_steers_block_sampling(tmp_path):
    rng = random.Random(0)
    # the denoiser's corpus: long single-class documents, so almost every training row is one class
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n\n".join(doc(rng, CLASSES[n], 4000) for n in ["ab", "xy"] * 3))
    labelled = tmp_path / "labelled.jsonl"
    with labelled.open("w") as f:
        for i in range(400):
            name = ["ab", "xy"][i % 2]
            f.write(json.dumps({"text": doc(rng, CLASSES[name], rng.randint(4, 30)), "label": name}) + "\n")

    denoiser = run_cli(
        "dlm-train", "objective=block", "objective.block_size=4", "model=tiny", "model.attention=block_causal",
        "+model.block_size=4", "model.max_seq_len=32", "data=text_file", f"data.source={corpus}",
        "data.seq_len=32", "batch_size=16", "trainer.max_steps=150", "trainer.val_check_interval=150",
        "trainer.limit_val_batches=1", "optim.lr=2e-3", "optim.warmup_steps=10", "ema_decay=0.9",
        f"run_dir={tmp_path}/block", cwd=tmp_path)["model_dir"]
    clf = run_cli(
        "dlm-train", "experiment=guidance_classifier", f"tokenizer_from={denoiser}", f"data.source={labelled}",
        "data.classes=[ab,xy]", "data.seq_len=32", "model.dim=32", "model.n_layers=1", "model.n_heads=2",
        "trainer.max_steps=80", "trainer.val_check_interval=80", f"run_dir={tmp_path}/clf", cwd=tmp_path)
    assert clf["kind"] == "classifier" and clf["val/nll"] < 0.45  # log 2 = 0.69 is chance

    shares = {}
    for gamma in (0.0, 4.0):
        out = tmp_path / f"guided_{gamma}.jsonl"
        run_cli("dlm-sample", f"model={denoiser}", "sampler=block_guided", f"sampler.guidance.classifier.path={clf['model_dir']}",
                "sampler.guidance.target_class=1", f"sampler.guidance.gamma={gamma}", "num_samples=32",
                "batch_size=16", "length=16", f"out={out}", cwd=tmp_path)
        labels = [class_of(json.loads(line)["text"]) for line in out.read_text().splitlines()]
        shares[gamma] = sum(lab == "xy" for lab in labels) / len(labels)
    print("class-1 share by gamma:", shares)
    assert 0.15 <= shares[0.0] <= 0.85, f"the unguided denoiser should draw both classes: {shares}"
    assert shares[4.0] >= shares[0.0] + 0.25, f"guidance towards class 1 (xy) did not steer: {shares}"
