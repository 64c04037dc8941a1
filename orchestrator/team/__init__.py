"""The team setup (object storage, a tracking database, one MLflow server) on this machine."""
