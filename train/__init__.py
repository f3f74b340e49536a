"""Training, evaluation and synthetic phantoms; writes checkpoints into model_zoo."""
