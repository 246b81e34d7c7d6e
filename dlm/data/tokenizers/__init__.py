"""Tokenizer implementations: characters, DNA/protein letters, HF byte-level BPE (hub, files, trained)."""
