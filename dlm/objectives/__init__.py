"""Training objectives: plain torch callables (model, batch) -> LossOutput."""
