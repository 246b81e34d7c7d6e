"""A sequence-design job (what ``dlm-design`` runs): draw designs with one method, score them with an
evaluation oracle, write them (CSV or FASTA) and summarise (``dlm.eval.design``, ``dlm.eval.design_space``).

Methods (``conf/design/method/``) differ only in the sampler and the model directory:
  base       the pretrained model, ancestral sampler
  drakes     a DRAKES-fine-tuned model directory (its model.json has a ``drakes`` record), sampled with the same
             ancestral sampler: DRAKES changes the weights, not the sampler
  svdd, smc, cg, best_of_n   the pretrained model with that inference-time sampler, steered by ``reward``
The evaluation oracle (``eval_reward``) scores every design and never steers; it must not be the
fine-tuning reward (``dlm.rewards.separation``; ``allow_same_oracle`` overrides). Everything is checked before
any compute, and the files are written only when every design is scored, atomically:

  <out>                      .csv: ``sequence,reward,eval_reward`` per design (reward empty without one);
                             .fa / .fasta / .faa / .fna: ``>design_<i> reward=<r> eval_reward=<e>`` + sequence
  <out stem>.summary.json    the summary (returned) with ``settings``; an existing ``out`` is replaced only by a
                             job of the same settings (a rerun), as dlm-sample does

DNA designs are compared with data when the design space's ``measured`` entry builds a ``DesignReference``
(``reference.path=<FASTA | table>``, ``dlm.eval.design_reference``): the 3-mer and JASPAR motif correlations with
its top windows (``dlm.eval.design_dna_metrics``), the reference read and checked before any design is drawn.

Network calls: ``nfe`` is the samplers' count of batched denoiser calls per design's batch (dlm-sample's);
``network_rows_per_design`` counts every sequence the denoiser was run on (a forward hook), divided by the
designs: the compute that matched-budget comparisons equalise (an SVDD step runs 1 + M rows per row).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from dlm.data.sequence_table import SequenceTable
from dlm.data.tokenizers.bio import LetterTokenizer
from dlm.errors import CheckpointError, ConfigError, DlmError
from dlm.eval.design import app_log_lik, design_diversity, reward_stats
from dlm.eval.design_dna_metrics import reference_metrics
from dlm.eval.design_exact import cells_of, enumerable
from dlm.eval.design_reference import DesignReference, ReferenceRows
from dlm.eval.design_space import space_metrics
from dlm.eval.sample_job import check_samples_path, rows_start_with_bos
from dlm.io.atomic import atomic_file, write_json_atomic
from dlm.io.model_dir import LoadedModel, load_model_dir
from dlm.io.provenance import provenance
from dlm.io.reward_dir import save_reward
from dlm.rewards.finite import check_finite_reward
from dlm.rewards.protocol import RewardModel, check_reward_fits
from dlm.rewards.pwm import DNA
from dlm.rewards.reward_dir import REWARD_FILE, locate_dlm
from dlm.rewards.separation import check_separate_oracles
from dlm.types import Sampler

FASTA = (".fa", ".fasta", ".faa", ".fna")


def output_format(out: Path) -> str:
    if out.suffix.lower() == ".csv":
        return "csv"
    if out.suffix.lower() in FASTA:
        return "fasta"
    raise ConfigError(f"out={out}: the extension picks the format; use .csv or one of {', '.join(FASTA)}")


def pretrained_dir(loaded: LoadedModel, method: str, pretrained: str | None) -> str:
    """The pretrained model of App-Log-Lik and the KLs: ``pretrained``, else the one a DRAKES model was fine-tuned
    from, else the model itself. method=drakes refuses a model without a DRAKES record."""
    record = loaded.meta.get("drakes")
    if method == "drakes" and not isinstance(record, dict):
        raise ConfigError(f"method=drakes samples a DRAKES-fine-tuned model directory and model={loaded.path} has no "
                          "drakes record; fine-tune one (dlm-train experiment=drakes_gb1_demo ...) or use method=base")
    if pretrained is not None:
        return pretrained
    if isinstance(record, dict):
        origin = str(record.get("finetuned_from"))
        if not Path(origin).expanduser().is_dir():
            raise ConfigError(f"model={loaded.path} was fine-tuned from {origin}, which is not a directory here; pass "
                              "pretrained=<the base model directory>")
        return origin
    return str(loaded.path)


def recorded_reward(record: dict, *, model: str) -> tuple[RewardModel | None, str | None, str | None]:
    """A DRAKES model's fine-tuning reward rebuilt from the spec its model.json records (``drakes.reward``; only
    ``dlm.*`` targets): (reward, its directory when it was loaded from one, a label); Nones without a record."""
    spec = record.get("reward")
    if not isinstance(spec, dict) or "_target_" not in spec:
        return None, None, None
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    try:
        reward = locate_dlm(spec["_target_"], f"{model}: drakes.reward._target_")(**kwargs)
    except (DlmError, TypeError) as e:
        raise ConfigError(f"model={model} was fine-tuned on the reward {spec}, which cannot be rebuilt here ({e}); "
                          "pass reward=<that reward's directory>") from None
    path = kwargs.get("path")
    path = str(path) if isinstance(path, str) and (Path(path).expanduser() / REWARD_FILE).is_file() else None
    return reward, path, path or spec["_target_"]


def same_oracle_check(reward: RewardModel | None, reward_path: str | None, eval_reward: RewardModel,
                      eval_path: str | None, *, allow_same_oracle: bool) -> None:
    """``check_separate_oracles`` on the two reward directories; a reward given by name is saved to a
    temporary directory first, so named and saved rewards compare by the same fingerprint."""
    if reward is None or allow_same_oracle:
        return
    with tempfile.TemporaryDirectory(prefix="dlm-design-") as tmp:
        paths = []
        for r, p, name in ((reward, reward_path, "reward"), (eval_reward, eval_path, "eval_reward")):
            if p is None:
                p = str(Path(tmp) / name)
                try:
                    save_reward(r, p)
                except AttributeError:  # a reward without save() has no fingerprint: only identity is refused
                    paths = None
                    break
            paths.append(p)
        if paths is None:
            if reward is eval_reward:
                raise ConfigError("eval_reward is the fine-tuning reward; pass another oracle or allow_same_oracle=true")
            return
        try:
            check_separate_oracles(paths[0], paths[1])
        except ConfigError as e:
            raise ConfigError(f"eval_reward={eval_path or 'its default'} vs reward={reward_path}: {e}") from None


def score(reward: RewardModel, tokens: Tensor, vocab_size: int, *, where: str) -> Tensor:
    """reward of designs (B, L) -> (B,) float64 on the CPU; NaN / inf refused (``NonFiniteError``)."""
    with torch.no_grad():
        values = reward(F.one_hot(tokens, vocab_size).float())
    return check_finite_reward(values.double().cpu(), reward=where)


def sequence_text(row: list[int], letters: str) -> str:
    """Letters of a design; a special token (outside the alphabet) is written '-' (counted in the summary)."""
    return "".join(letters[i] if i < len(letters) else "-" for i in row)


def write_designs(out: Path, fmt: str, seqs: list[str], reward: Tensor | None, eval_values: Tensor) -> None:
    with atomic_file(out) as f:
        if fmt == "csv":
            f.write("sequence,reward,eval_reward\n")
        for i, s in enumerate(seqs):
            r = "" if reward is None else repr(float(reward[i]))
            e = repr(float(eval_values[i]))
            f.write(f"{s},{r},{e}\n" if fmt == "csv" else f">design_{i} reward={r or 'NA'} eval_reward={e}\n{s}\n")


def finite_or_none(obj):
    """JSON has no NaN / inf: such numbers become null (recursively)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def design_space(loaded: LoadedModel, length: int | None) -> tuple[str, int, list[int]]:
    """(letters, canvas length, prompt ids) of a DNA / protein model: BOS first only when its rows had one."""
    tokenizer = loaded.tokenizer
    if not loaded.family.is_denoiser or not isinstance(tokenizer, LetterTokenizer):
        raise ConfigError(f"model={loaded.path} is not a DNA / protein masked-diffusion model (tokenizer "
                          f"{tokenizer.name}); dlm-design needs one trained with tokenizer=dna or tokenizer=protein")
    length = int(length or loaded.record.seq_len)
    prompt = [tokenizer.bos_id] if rows_start_with_bos(tokenizer, keep_first_token=loaded.record.keep_first_token) else []
    return tokenizer.letters, length, prompt


def check_design_reward(loaded: LoadedModel, reward: RewardModel | None, *, key: str, method: str,
                        needs_gradient: bool, length: int | None = None) -> None:
    """``check_reward_fits`` against the model's alphabet and designed length, the message led by ``key``;
    callable before the other inputs are built (a refusal then costs nothing)."""
    if reward is None:
        return
    letters, length, prompt = design_space(loaded, length)
    try:
        check_reward_fits(reward, alphabet=letters, length=length - len(prompt), needs_gradient=needs_gradient,
                          method=method)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def dna_reference(letters: str, measured: Callable[[], object] | None) -> DesignReference | None:
    """The reference of a DNA design space (its ``measured`` entry), None for other alphabets or without one."""
    if letters != DNA or measured is None:
        return None
    reference = measured()
    if reference is not None and not isinstance(reference, DesignReference):
        raise ConfigError(f"design_spaces.{DNA}.measured built a {type(reference).__name__}; DNA designs are compared "
                          "with a reference: dlm.eval.design_reference.load_reference (reference.path=<FASTA | table>)")
    return reference


def compare_with_reference(designs: Tensor, reference: DesignReference, rows: ReferenceRows, eval_reward: RewardModel,
                           *, vocab_size: int, eval_label: str) -> dict:
    """``reference_metrics`` of designs (B, L) against the reference rows, ranked by their measured values or,
    without any, by the evaluation oracle; the keys prefixed as in the summary."""
    windows = torch.tensor([[DNA.index(c) for c in s] for s in rows.sequences], dtype=torch.long)
    values = (torch.tensor(rows.values, dtype=torch.float64) if rows.values is not None else
              score(eval_reward, windows, vocab_size, where=f"the evaluation oracle {eval_label} (reference windows)"))
    return {**reference_metrics(designs, windows, values, top_fraction=reference.top_fraction, hits=reference.hits),
            "reference": rows.source, "reference_ranked_by": reference.settings()["ranked_by"]}


def design_to_file(*, loaded: LoadedModel, sampler: Sampler, method: str, needs_gradient: bool,
                   reward: RewardModel | None, reward_label: str | None, reward_path: str | None,
                   eval_reward: RewardModel, eval_label: str, eval_path: str | None, num_samples: int,
                   length: int | None = None, batch_size: int = 256, seed: int = 0, out: str | Path = "designs.csv",
                   pretrained: str | None = None, allow_same_oracle: bool = False, threshold: float | None = None,
                   log_lik_samples: int = 16, measured: Callable[[], SequenceTable | DesignReference | None] | None = None,
                   top_fraction: float = 0.01, target_alpha: float | None = None, overwrite: bool = False) -> dict:
    """Run the job of the module docstring; returns the summary (also written beside ``out``). ``measured``
    builds the measured data of the space (top 1 %, natural prior), called once every input is accepted; for
    DNA it builds the ``DesignReference`` (or None), read before sampling."""
    if num_samples < 1 or batch_size < 1:
        raise ConfigError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
    out = Path(out)
    fmt = output_format(out)
    letters, length, prompt = design_space(loaded, length)
    designed = length - len(prompt)
    check_design_reward(loaded, reward, key="reward", method=method, needs_gradient=needs_gradient, length=length)
    check_design_reward(loaded, eval_reward, key="eval_reward", method=method, needs_gradient=False, length=length)
    same_oracle_check(reward, reward_path, eval_reward, eval_path, allow_same_oracle=allow_same_oracle)
    pre_dir = pretrained_dir(loaded, method, pretrained)
    reference = dna_reference(letters, measured)
    ref_rows = None if reference is None else reference.rows(designed)  # read and checked before any sampling
    if reference is not None:
        measured = None  # a DNA space's measured entry is its reference, not measured cells
    sampler.check_model(loaded.model)
    record = provenance(seed=seed, settings=sampler, model=loaded.model, source=loaded.path)
    settings = {"method": method, "sampler": record["settings"], "model_fingerprint": record["model_fingerprint"],
                "reward": reward_label, "eval_reward": eval_label, "num_samples": num_samples, "length": length,
                "batch_size": batch_size, "seed": seed, "pretrained": pre_dir, "target_alpha": target_alpha,
                "log_lik_samples": log_lik_samples, "threshold": threshold, "top_fraction": top_fraction,
                **({} if reference is None else {"reference": reference.settings()})}
    summary_path = out.with_name(f"{out.stem}.summary.json")
    if not overwrite:
        check_samples_path(out, summary_path, settings)
    pre = loaded if Path(pre_dir).resolve() == Path(str(loaded.path)).resolve() else \
        load_model_dir(pre_dir, device=next(loaded.model.parameters()).device)
    if pre.tokenizer.vocab_size != loaded.tokenizer.vocab_size or pre.model.mask_id != loaded.model.mask_id:
        raise CheckpointError(f"pretrained={pre_dir} has another vocabulary than model={loaded.path}")

    start = time.perf_counter()
    device = next(loaded.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt_t = torch.tensor(prompt, dtype=torch.long, device=device) if prompt else None
    rows = [0]
    hook = loaded.model.register_forward_pre_hook(lambda _m, args: rows.__setitem__(0, rows[0] + args[0].shape[0]))
    tokens, nfe_total, seconds, aux = [], 0, 0.0, {}
    try:
        sizes = [min(batch_size, num_samples - s) for s in range(0, num_samples, batch_size)]
        for b in tqdm(sizes, desc=f"design ({method})", dynamic_ncols=True):
            res = sampler(loaded.model, batch_size=b, length=length, prompt=prompt_t, generator=generator)
            tokens.append(res.tokens[:, len(prompt):].cpu())
            nfe_total += res.nfe * b
            seconds += res.seconds
            for name, n in res.aux_calls.items():
                aux[name] = aux.get(name, 0) + n
    finally:
        hook.remove()
    x = torch.cat(tokens)
    v = loaded.model.vocab_size
    r_values = None if reward is None else score(reward, x, v, where=f"the reward {reward_label}")
    e_values = score(eval_reward, x, v, where=f"the evaluation oracle {eval_label}")
    ll, ll_var = app_log_lik(pre.model, x.to(device), schedule=pre.schedule, num_samples=log_lik_samples,
                             generator=torch.Generator(device=device).manual_seed(seed + 1))
    summary = {"method": method, "num_samples": num_samples, **reward_stats(e_values, threshold=threshold),
               "median_finetune_reward": None if r_values is None else float(r_values.median()),
               "mean_finetune_reward": None if r_values is None else float(r_values.mean()),
               "app_log_lik": float(ll.median()), "app_log_lik_mean": float(ll.mean()),
               "app_log_lik_se": float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else None,
               **design_diversity(x), "nfe": nfe_total / num_samples,
               "network_rows_per_design": rows[0] / num_samples,
               **{f"{name}_calls": n for name, n in aux.items()}, "seconds": seconds,
               "model": str(loaded.path), "pretrained": pre_dir, "reward": reward_label, "eval_reward": eval_label,
               "sampler": type(sampler).__name__, "length": length, "out": str(out)}
    if enumerable(len(letters), designed):
        m_cells = m_values = None
        measured = measured() if measured is not None else None
        if measured is not None:
            m_cells = cells_of(torch.tensor([[letters.index(c) for c in s] for s in measured.sequences]), len(letters))
            m_values = torch.tensor(measured.values, dtype=torch.float64)
        summary |= space_metrics(cells=cells_of(x, len(letters)), model=loaded.model, sampler=sampler,
                                 pretrained=pre.model, alphabet_size=len(letters), length=designed, reward=reward,
                                 eval_reward=eval_reward, measured_cells=m_cells, measured_values=m_values,
                                 top_fraction=top_fraction, target_alpha=target_alpha)
    if reference is not None:
        summary |= compare_with_reference(x, reference, ref_rows, eval_reward, vocab_size=v, eval_label=eval_label)
    summary["total_seconds"] = time.perf_counter() - start
    summary = finite_or_none({**summary, "provenance": record, "settings": settings})
    write_designs(out, fmt, [sequence_text(row, letters) for row in x.tolist()], r_values, e_values)
    write_json_atomic(summary_path, summary)
    return summary

