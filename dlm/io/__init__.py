"""Storage, in one place: model directories (save, load, migrate on read, safe load overrides), the
typed record of what a directory is, the one atomic writer, tokenizer files, HF directories.

    atomic.py           atomic_dir / atomic_file (+ write_text/json/jsonl_atomic): temp + rename
    spec.py             build({"_target_": "dlm.…", ...}): JSON specs of models and schedules
    record.py           Family (AR / MASKED / BLOCK / CLASSIFIER / BLOCK_POLICY) and ModelRecord
    migrate.py          older model.json layouts -> today's (format 1 -> 2: block_size -> seq_len, ...)
    overrides.py        rope_scaling / max_seq_len / attn_backend / dtype / device at load time
    model_dir.py        save_model_dir, load_model_dir -> LoadedModel, read_record
    tokenizer_files.py  save / load a tokenizer directory, find a model directory's tokenizer
    classifier_dir.py   guidance classifiers (save_classifier, load_classifier)
    block_policy_dir.py block-size policies (save_block_policy, load_block_policy)
    hf_dir.py           dlm-convert: HF causal-LM directories <-> dlm model directories
    hub.py              Hugging Face Hub ids (org/name[@revision]) as model paths: resolve_model_path
    model_card.py       the README.md model card dlm-push writes (family, size, training, eval table)
    push.py             dlm-push: check, write the card, create_repo + upload_folder (or dry_run)
    provenance.py       the "provenance" object of every result JSON (version, git rev, seed, fingerprint)

Models never import this package (DESIGN §1); ``dlm.load`` is ``load_model_dir``.
"""
