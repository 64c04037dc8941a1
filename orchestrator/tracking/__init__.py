"""MLflow: the run lifecycle on the driver and the rank-0 metric writer."""
