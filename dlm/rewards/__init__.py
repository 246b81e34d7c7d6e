"""Rewards for sequence design: differentiable functions of a (B, L, V) one-hot/soft sequence -> (B,).

``protocol.py`` declares the contract every reward speaks; ``toy.py`` holds closed-form rewards
(GC content, k-mer counts) used by tests and demos.
"""
