"""Rewards for sequence design: differentiable functions of a (B, L, V) one-hot/soft sequence -> (B,).

``protocol.py`` declares the contract every reward speaks; ``toy.py`` holds closed-form rewards
(GC content, k-mer counts) used by tests and demos; ``pwm.py`` scans JASPAR/MEME motifs on both
strands (soft-max pooled, or a hit count); ``oracle.py`` / ``oracle_nets.py`` / ``oracle_fit.py``
are trained sequence -> value regressors; ``gb1_lookup.py`` is the exact GB1 landscape;
``reward_dir.py`` loads any saved reward by path (``dlm.io.reward_dir`` saves); ``separation.py``
keeps the evaluation oracle apart from the fine-tuning reward; ``finite.py`` refuses NaN rewards;
``correlation.py`` scores oracles (Pearson, Spearman).
"""
