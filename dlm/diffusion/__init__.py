"""Masked (absorbing) diffusion maths: schedules, forward corruption, reverse steps."""
