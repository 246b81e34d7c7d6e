"""Checkpoint conversion between dlm model directories and other formats."""
