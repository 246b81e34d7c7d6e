"""The model card (``README.md``) dlm-push writes into a model directory before uploading it.

The card says what the model is (family, attention, size, tokenizer, row length, training steps), how it
was trained (a summary of ``config.yaml``, the file itself folded below), what it scored (every
``eval/*.json`` result of dlm-eval-ppl as a table), which dlm wrote it and how to load it
(``dlm.load("org/name")``). Everything is read from the directory's files; nothing is built, so a card
is cheap for a model of any size. A card carries ``CARD_MARKER``, so dlm-push rewrites its own card but
never a README someone wrote by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import safe_open

from dlm.io.model_dir import CONFIG_FILE, WEIGHTS_FILE, read_record
from dlm.io.provenance import dlm_version, git_revision
from dlm.io.record import Family
from dlm.io.tokenizer_files import TOKENIZER_DIR

CARD_FILE, EVAL_DIR = "README.md", "eval"
CARD_MARKER = "<!-- written by dlm-push: rewritten on every push; delete this line to keep your edits -->"
FAMILY_TEXT = {
    Family.AR: "an autoregressive language model",
    Family.MASKED: "a masked (absorbing) discrete diffusion language model",
    Family.BLOCK: "a block discrete diffusion language model",
    Family.CLASSIFIER: "a noisy-sequence classifier (guidance for diffusion sampling)",
    Family.BLOCK_POLICY: "a block-size policy (dynamic blocks for block diffusion sampling)",
    Family.ENERGY: "an EDLM residual energy (corrects a diffusion model's sampling)",
}
# config.yaml keys worth a line in the summary (dotted paths), in this order
TRAINING_KEYS = ("objective._target_", "objective.form", "schedule._target_", "data.source", "data.seq_len",
                 "tokenizer._target_", "batch_size", "global_batch_size", "optim.lr", "optim.warmup_steps",
                 "trainer.max_steps", "trainer.precision", "ema_decay", "init_from", "seed")


def parameter_count(weights: Path) -> int:
    """Parameters stored in a safetensors file, read from its header (no tensor is loaded)."""
    with safe_open(str(weights), framework="pt") as f:
        return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())


def human(n: int) -> str:
    """12345678 -> '12.3M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def training_summary(config_yaml: Path) -> list[tuple[str, Any]]:
    """(key, value) of ``TRAINING_KEYS`` present in the resolved training config."""
    import yaml

    try:
        cfg = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    rows = []
    for key in TRAINING_KEYS:
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            rows.append((key, node))
    return rows


def eval_rows(directory: Path) -> list[dict]:
    """The perplexity results under ``<dir>/eval`` (dlm-eval-ppl's JSON), in file-name order."""
    rows = []
    for path in sorted((directory / EVAL_DIR).glob("*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(result, dict) and isinstance(result.get("ppl"), (int, float)):
            rows.append({"file": f"{EVAL_DIR}/{path.name}", **result})
    return rows


def eval_table(rows: list[dict]) -> str:
    """Markdown table of ``eval_rows``; a sentence when there is none."""
    if not rows:
        return "No evaluation results in `eval/` (run `dlm-eval-ppl model=<dir> data=<corpus>` before pushing)."
    lines = ["| data | split | seq_len | method | perplexity | NLL/token ± s.e. | tokens | result |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        method = r.get("method", "?") + (f" ({r['t_samples']} t)" if r.get("t_samples", 1) > 1 else "")
        se = r.get("nll_stderr")
        nll = f"{r['nll']:.4f}" + (f" ± {se:.4f}" if isinstance(se, (int, float)) else "") if "nll" in r else "?"
        lines.append(f"| {r.get('dataset', '?')} | {r.get('split', '?')} | {r.get('seq_len', '?')} | {method} | "
                     f"{r['ppl']:.3f} | {nll} | {r.get('tokens', '?')} | `{r['file']}` |")
    return "\n".join(lines)


def model_card(directory: str | Path, repo_id: str) -> str:
    """The README.md text of the model directory ``directory`` published as ``repo_id`` (see module docstring)."""
    directory = Path(directory)
    record, meta = read_record(directory)
    spec = {k: v for k, v in record.model_spec.items() if k != "_target_"}
    tokenizer = json.loads((directory / TOKENIZER_DIR / "dlm_tokenizer.json").read_text(encoding="utf-8"))
    params = parameter_count(directory / WEIGHTS_FILE)
    attention = spec.get("attention") or record.family.attention or "n/a"
    about = [("family", f"`{record.family.kind}`"), ("attention", f"`{attention}`"),
             ("architecture", f"`{record.model_spec.get('_target_')}`"), ("parameters", f"{human(params)} ({params:,})")]
    about += [(k, f"`{spec[k]}`") for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "block_size", "vocab_size",
                                              "max_seq_len", "time_conditioned") if spec.get(k) is not None]
    about += [("tokenizer", f"`{tokenizer.get('target')}` {json.dumps(tokenizer.get('kwargs') or {})}"),
              ("seq_len (training rows)", f"`{record.seq_len}`"), ("training steps", f"`{record.step}`"),
              ("noise schedule", f"`{(record.schedule_spec or {}).get('_target_')}`")]
    if record.ar_softmax:
        about.append(("ar_softmax", f"`{record.ar_softmax}`"))
    if meta.get("converted_from"):
        about.append(("converted from", f"`{meta['converted_from']}`"))
    training = training_summary(directory / CONFIG_FILE) if (directory / CONFIG_FILE).is_file() else []
    rev = git_revision()
    tags = ["dlm", "discrete-diffusion" if record.family in (Family.MASKED, Family.BLOCK) else record.family.kind]
    parts = [
        "---", "library_name: dlm", "tags:", *(f"- {t}" for t in tags), "---", CARD_MARKER, "",
        f"# {repo_id}", "",
        f"{FAMILY_TEXT[record.family].capitalize()}, exported by dlm {dlm_version()}"
        + (f" (git `{rev[:12]}`)" if rev else "") + ".", "",
        "## Model", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in about), "",
        "## Training", "",
        *([f"- `{k}`: `{v}`" for k, v in training] or ["No `config.yaml` in this directory."]), "",
        "## Evaluation", "", eval_table(eval_rows(directory)), "",
        "## Use", "",
        "```python", "import dlm", "", f'loaded = dlm.load("{repo_id}")            # or "{repo_id}@<revision>"',
        "loaded.model, loaded.tokenizer, loaded.schedule", "```", "",
        "```bash", f"dlm-sample model={repo_id} num_samples=4 length=128 out=samples.jsonl",
        f"dlm-eval-ppl model={repo_id} data=<corpus or local .txt>", "```", "",
        "Offline, download it first (`hf download " + repo_id + " --local-dir <dir>`) and pass `model=<dir>`. "
        "Loading builds only `dlm.*` classes from `model.json` and reads weights from safetensors: nothing in "
        "this repository is executed.",
    ]
    if training:
        config = (directory / CONFIG_FILE).read_text(encoding="utf-8")
        parts += ["", "<details><summary>config.yaml (the resolved training config)</summary>", "", "```yaml",
                  config.rstrip(), "```", "", "</details>"]
    return "\n".join(parts) + "\n"
