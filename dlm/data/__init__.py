"""Data: tokenizers, corpora, packing, detokenizers and on-disk token caches."""
