"""Lightning strategies that need Python objects a YAML file cannot name.

``trainer=fsdp`` is FSDP2 (``torch.distributed.fsdp.fully_shard``, per-parameter DTensor sharding) through
Lightning's ``ModelParallelStrategy``: the sharding units come from the model (``dlm.types.Shardable``),
the module applies them in ``configure_model`` (``dlm.train.module``), and the EMA shadow is sharded
alike. FSDP1 (``FullyShardedDataParallel``) is not offered: its flat parameters have no per-parameter
identity, which the EMA shadow and the gathered export need.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """Pure data-parallel sharding (FULL_SHARD over every process): the data-parallel size is the world
    size and tensor parallelism is 1, whatever the devices and nodes."""

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" means data parallel across nodes only, tensor parallel within one
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()


def fsdp_strategy(*, process_group_backend: str | None = None) -> FSDP2Strategy:
    """FSDP2 with full (consolidated) checkpoints, so ``last.ckpt`` is one file that resume and every
    strategy read. ``process_group_backend``: None picks nccl on GPUs; "gloo" for CPU processes (tests)."""
    return FSDP2Strategy(data_parallel_size="auto", tensor_parallel_size="auto", save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend)
