"""Lightning glue: the only layer that imports lightning, hydra or omegaconf."""
