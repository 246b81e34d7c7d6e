"""Benchmarks: each compares against its baseline in the same run and writes JSON."""
