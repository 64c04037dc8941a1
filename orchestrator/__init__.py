"""orchestrator: train detectron2 BlendMask/CondInst models on Ray clusters, tracked in MLflow."""

__version__ = "0.1.0"
