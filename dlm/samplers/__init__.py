"""Samplers: each owns its loop and returns SampleOutput."""
