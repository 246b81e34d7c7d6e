"""Run a dlm command line and read the JSON object on its last stdout line."""

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
TINY = ["model=tiny", "data.seq_len=32", "batch_size=4", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1", "data.max_train_tokens=20000"]


def run_cli(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
