"""Network architectures of the target models, written from the layer shapes of their checkpoints."""
