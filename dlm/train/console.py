"""A quiet console for training: Lightning's advertising and environment chatter are dropped at the source.

Kept: progress bars, the model summary, warnings about the user's run. Dropped: hardware-absent lines
("GPU available: False", "TPU available"), tips ("💡 Tip: ... litlogger", the Tensor Cores hint),
the per-rank ``LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES`` line, the echo of ``trainer.limit_*`` settings, the
tip to log more often in a short run, and deprecation warnings raised inside Lightning by the installed
torch (nothing a dlm user can act on). Called by ``run`` rather than at import, so importing dlm.train
changes no global state.
"""

from __future__ import annotations

import logging
import warnings

# the first words of the rank-zero INFO lines that are dropped
# ("`Trainer(limit_val_batches=1)` was configured so 1 batch will be used." restates the user's own setting)
CHATTER = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip", "You are using a CUDA device",
           "`Trainer(limit_")


class DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CHATTER)


def quiet_lightning() -> None:
    """Install the filters (idempotent)."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropChatter) for f in rank_zero.filters):
        rank_zero.addFilter(DropChatter())
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)  # LOCAL_RANK: ... lines
    # torch's pytree deprecations (LeafSpec, ...) fire inside lightning.pytorch.utilities._pytree
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*deprecated")
    # val/nll is reduced by DlmModule itself (an all_gather of token-weighted sums), so the advice to
    # average it again with sync_dist=True is wrong for it
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/")
    # a short run (max_steps below trainer.log_every_n_steps) gets a tip to log more often: its final metrics
    # are printed by dlm-train anyway
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
