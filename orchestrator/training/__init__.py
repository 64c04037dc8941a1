"""What runs inside a Ray Train worker: cfg, process groups, trainer, hooks."""
