"""Evaluation: perplexity bounds and exact AR perplexity."""
