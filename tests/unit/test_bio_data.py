"""DNA / protein data: FASTA windows and N policies, GB1 and MPRA tables, and the dlm-train data configs.

Synthetic data only (written to tmp_path) plus the files shipped in data/; never ../shared.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile

import pytest
import torch
from hydra.utils import get_class, instantiate
from hydra_helpers import compose_config
from omegaconf import OmegaConf

from dlm.data.fasta import FastaRecord, clean_sequence, fasta_windows, read_fasta
from dlm.data.gb1 import load_gb1
from dlm.data.mpra_table import load_mpra_table
from dlm.data.synthetic_genome import synthetic_genome
from dlm.errors import ConfigError


def write_fasta(path, records: dict[str, str], width: int = 60):
    path.write_text("".join(f">{name} some description\n" + "".join(seq[i:i + width] + "\n"
                                                                      for i in range(0, len(seq), width))
                            for name, seq in records.items()))
    return path


def write_gb1_zip(path, rows):
    """A FLIP-format zip: Variants, Fitness, one split column (sampled) and its _validation flag."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Variants", "HD", "Fitness", "keep", "sampled", "sampled_validation"])
    for variant, fitness, split, val in rows:
        w.writerow([variant, 1, fitness, str(bool(split)), split, val])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("four_mutations_full_data.csv", buf.getvalue())
    return path


GB1_ROWS = [("VDGV", 1.0, "train", ""), ("ADGV", 0.06, "train", "True"), ("CDGV", 0.24, "test", ""),
            ("FWAA", 8.76, "", ""), ("WWWW", 0.0, "", "")]


# ----------------------------------------------------------------------------------------------- FASTA
def test_windows_are_non_overlapping_and_records_read_across_line_breaks(tmp_path):
    seq = synthetic_genome(1000, seed=1).sequence
    f = write_fasta(tmp_path / "g.fa", {"chrA": seq, "chrB": seq[:250]})
    records = read_fasta(f)
    assert [r.name for r in records] == ["chrA", "chrB"] and records[0].sequence == seq
    train = fasta_windows(records, seq_len=100, split="train", eval_fraction=0.1)
    # chrA: first 900 bp -> 9 windows; chrB: first 225 bp -> 2 windows
    assert len(train) == 11 and train[0] == seq[:100] and train[8] == seq[800:900]
    assert len(fasta_windows(records, seq_len=100, split="train", eval_fraction=0.1, stride=50)) == 17 + 3


def test_validation_is_a_contiguous_tail_sharing_no_base_with_training(tmp_path):
    seq = synthetic_genome(5000, seed=2).sequence
    records = [FastaRecord("r", seq)]
    train = fasta_windows(records, seq_len=50, split="train", eval_fraction=0.2, stride=10)
    held = fasta_windows(records, seq_len=50, split="eval", eval_fraction=0.2, stride=10)
    assert "".join(held[::5]) == seq[4000:]  # non-overlapping every-5th window tiles the tail exactly
    last_train_end = max(seq.find(w) + 50 for w in train[-3:])
    assert last_train_end <= 4000  # every training window ends before the held-out region starts


def test_refuse_names_character_record_and_position(tmp_path):
    f = write_fasta(tmp_path / "g.fa", {"chr1": "ACGTAC" + "a" + "CGT" * 10})
    with pytest.raises(ConfigError, match=r"'chr1' has 'a' at position 7 \(1-based\).*data.policy=drop"):
        fasta_windows(read_fasta(f), seq_len=10, policy="refuse")
    f = write_fasta(tmp_path / "x.fa", {"chrX": "ACGT" * 5 + "X"})
    for policy in ("refuse", "drop", "map"):
        with pytest.raises(ConfigError, match=r"'chrX' has 'X' at position 21"):
            fasta_windows(read_fasta(f), seq_len=4, policy=policy)


def test_drop_removes_windows_with_n_and_uppercases_soft_masked_bases():
    record = FastaRecord("r", "acgtACGT" + "NNNN" + "ACGTACGT" + "ACGTnCGT")
    got = fasta_windows([record], seq_len=4, policy="drop", split="train", eval_fraction=0.01)
    assert got == ["ACGT", "ACGT", "ACGT", "ACGT", "ACGT"]  # 7 windows of 4, two with N dropped
    assert all(set(w) <= set("ACGT") for w in got)


def test_map_refuses_n_unless_told_which_letter():
    record = FastaRecord("r", "acgNACGT")
    with pytest.raises(ConfigError, match=r"'N' at position 4.*data.n_as"):
        clean_sequence(record, policy="map")
    assert clean_sequence(record, policy="map", n_as="A") == "ACGAACGT"
    with pytest.raises(ConfigError, match="data.n_as"):
        clean_sequence(record, policy="refuse", n_as="A")
    with pytest.raises(ConfigError, match="data.policy='keep'; valid: refuse, drop, map"):
        clean_sequence(record, policy="keep")  # type: ignore[arg-type]


def test_a_split_without_windows_is_refused():
    with pytest.raises(ConfigError, match="holds no 200-letter window"):
        fasta_windows([FastaRecord("r", "ACGT" * 10)], seq_len=200)


# ----------------------------------------------------------------------------------------------- GB1
def test_gb1_zip_parse_and_flip_set_selection(tmp_path):
    z = write_gb1_zip(tmp_path / "gb1.zip", GB1_ROWS)
    every = load_gb1(z)
    assert every.sequences == ["VDGV", "ADGV", "CDGV", "FWAA", "WWWW"] and every.values[3] == pytest.approx(8.76)
    assert load_gb1(z, split="sampled", sets=["train"]).sequences == ["VDGV"]
    assert load_gb1(z, split="sampled", sets=["train", "validation"]).rows == [0, 1]
    assert load_gb1(z, split="sampled", sets="test").sequences == ["CDGV"]
    assert load_gb1(z, split="sampled", sets=["unassigned"]).sequences == ["FWAA", "WWWW"]
    with pytest.raises(ConfigError, match="split='nope' is not a FLIP split column.*valid: \\['sampled'\\]"):
        load_gb1(z, split="nope", sets=["train"])
    with pytest.raises(ConfigError, match="must name some of train, validation, test, unassigned"):
        load_gb1(z, split="sampled", sets=["dev"])


@pytest.mark.parametrize("variant, match", [("VDGX", r"row 2: 'X' at position 4"),
                                            ("VDG", r"row 2: sequence has 3 letters, the design space needs 4")])
def test_gb1_bad_rows_name_row_and_position(tmp_path, variant, match):
    z = write_gb1_zip(tmp_path / "bad.zip", [GB1_ROWS[0], (variant, 0.1, "", "")])
    with pytest.raises(ConfigError, match=match):
        load_gb1(z)


def test_shipped_gb1_zip_is_the_full_landscape():
    t = load_gb1()
    assert len(t) == 149_361 and len(set(t.sequences)) == 149_361
    fitness = dict(zip(t.sequences, t.values, strict=True))
    assert fitness["VDGV"] == 1.0 and fitness["FWAA"] == pytest.approx(8.762, abs=1e-3)


# ----------------------------------------------------------------------------------------------- MPRA
def test_mpra_table_columns_splits_halves_and_bad_rows(tmp_path):
    seqs = [synthetic_genome(20, seed=i).sequence for i in range(8)]
    tsv = tmp_path / "gosai.tsv"
    tsv.write_text("seq\thepg2\tk562\tsknsh\tchr\n" + "".join(
        f"{s.lower() if i == 0 else s}\t{i}\t{-i}\t0\tchr{1 + i % 2}\n" for i, s in enumerate(seqs)))
    t = load_mpra_table(tsv, value_column="k562", length=20)
    assert t.sequences[0] == seqs[0] and t.values == [-float(i) for i in range(8)]
    assert load_mpra_table(tsv, split_column="chr", split_values=["chr2"]).rows == [1, 3, 5, 7]
    first, second = (load_mpra_table(tsv, row_range=r) for r in ([0, 0.5], [0.5, 1.0]))
    assert first.rows == [0, 1, 2, 3] and second.rows == [4, 5, 6, 7]
    gz = tmp_path / "t.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write("sequence,activity\nACGT,1.5\nACNT,2\n")
    with pytest.raises(ConfigError, match=r"t.csv.gz row 2: 'N' at position 3"):
        load_mpra_table(gz, sequence_column="sequence", value_column="activity")
    with pytest.raises(ConfigError, match=r"no column\(s\) \['hepg2'\].*value_column"):
        load_mpra_table(gz, sequence_column="sequence")
    with pytest.raises(ConfigError, match="needs 5"):
        load_mpra_table(tsv, length=5)


# ----------------------------------------------------------------------------------------------- dlm-train
def datamodule_of(overrides: list[str]):
    """The data module dlm-train builds (as dlm.train.run does), set up, and one training-order batch."""
    cfg = compose_config("train", overrides)
    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    dm = get_class(kwargs.pop("_target_"))(tokenizer=instantiate(cfg.tokenizer), batch_size=cfg.batch_size,
                                           eval_batch_size=None, seed=cfg.seed, **kwargs)
    dm.setup()
    batch = next(iter(torch.utils.data.DataLoader(dm.datasets["train"], batch_size=cfg.batch_size)))
    return dm, batch


def test_data_gb1_gives_rows_of_four_residues_without_bos():
    dm, batch = datamodule_of(["data=gb1", "tokenizer=protein", "batch_size=8"])
    assert batch["input_ids"].shape == (8, 4) and int(batch["input_ids"].max()) < 20
    assert len(dm.datasets["train"]) == 149_361 and len(dm.datasets["eval"]) == 7_469  # the whole library
    held, _ = datamodule_of(["data=gb1", "tokenizer=protein", "data.holdout=true"])
    assert len(held.datasets["train"]) == 149_361 - 7_469
    train_rows = {tuple(r.tolist()) for r in held.datasets["train"].ids}
    assert not any(tuple(r.tolist()) in train_rows for r in held.datasets["eval"].ids)


def test_data_gb1_refuses_wrong_length_and_tokenizer(tmp_path):
    z = write_gb1_zip(tmp_path / "gb1.zip", GB1_ROWS * 10)
    with pytest.raises(ConfigError, match="data.seq_len=32 but GB1 variants have 4 letters; set data.seq_len=4"):
        datamodule_of(["data=gb1", "tokenizer=protein", f"data.path={z}", "data.seq_len=32"])
    with pytest.raises(ConfigError, match="set tokenizer=protein"):
        datamodule_of(["data=gb1", "tokenizer=dna", f"data.path={z}"])


def test_data_dna_genome_default_runs_without_any_file():
    dm, batch = datamodule_of(["data=dna_genome", "tokenizer=dna", "batch_size=4", "data.synthetic_length=20000"])
    assert batch["input_ids"].shape == (4, 200) and int(batch["input_ids"].max()) < 4
    assert len(dm.datasets["train"]) == 90 and len(dm.datasets["eval"]) == 10


def test_data_dna_genome_reads_a_fasta_with_its_policy(tmp_path):
    seq = synthetic_genome(3000, seed=3).sequence
    f = write_fasta(tmp_path / "g.fa", {"chr1": seq[:1000] + "N" * 10 + seq[1000:]})
    with pytest.raises(ConfigError, match=r"'chr1' has 'N' at position 1001"):
        datamodule_of(["data=dna_genome", "tokenizer=dna", f"data.path={f}"])
    dm, batch = datamodule_of(["data=dna_genome", "tokenizer=dna", f"data.path={f}", "data.policy=drop",
                               "data.seq_len=100", "batch_size=2"])
    assert batch["input_ids"].shape == (2, 100)
    # training region: the first round(3010 * 0.9) = 2709 bp -> 27 windows, minus the one holding the N run
    assert len(dm.datasets["train"]) == 26


def test_dlm_train_runs_two_steps_on_gb1(tmp_path):
    from dlm.train.run import run

    cfg = compose_config("train", ["data=gb1", "tokenizer=protein", "model=tiny", "model.max_seq_len=8",
                                   "objective.keep_first_token=false", "batch_size=8", "trainer.max_steps=2",
                                   "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
                                   "trainer.enable_progress_bar=false", "data.max_train_tokens=4000",
                                   "data.max_eval_tokens=400", f"run_dir={tmp_path / 'run'}"])
    summary = run(cfg)
    assert summary["step"] == 2 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
