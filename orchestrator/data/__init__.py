"""Datasets: generation, checks and registration with detectron2."""
