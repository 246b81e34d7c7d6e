"""Caches passed explicitly to backbones and samplers (never hidden inside modules)."""
