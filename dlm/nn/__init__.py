"""Layers shared by every backbone: attention kernels and masks, RoPE (+ NTK scaling), RMSNorm,
SwiGLU, timestep embeddings and adaLN modulation. Plain torch; nothing here knows about training."""
