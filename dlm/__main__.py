"""``python -m dlm``: the ``dlm`` command (no arguments lists the commands)."""

from dlm.cli import main

if __name__ == "__main__":
    main()
