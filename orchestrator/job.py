"""What the driver hands every worker: the spec, the plan, the data and where to log.

Travels through Ray as plain dicts (``train_loop_config``), so workers need no shared state
with the driver beyond the MLflow URI and run id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.data.catalog import ResolvedData
from orchestrator.plan import ScalingPlan
from orchestrator.spec import JobSpec

__all__ = ["WorkerJob"]


@dataclass(frozen=True, kw_only=True)
class WorkerJob:
    """Everything a worker needs to build its detectron2 cfg and log to the driver's run."""

    spec: JobSpec
    plan: ScalingPlan
    data: ResolvedData
    config_file: str
    output_dir: str
    run_id: str
    tracking_uri: str

    def to_config(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(mode="json"),
            "plan": asdict(self.plan),
            "data": self.data.to_dict(),
            "config_file": self.config_file,
            "output_dir": self.output_dir,
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
        }

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> WorkerJob:
        plan = dict(raw["plan"])
        plan["steps"] = tuple(plan["steps"])
        return cls(
            spec=JobSpec.model_validate(raw["spec"]),
            plan=ScalingPlan(**plan),
            data=ResolvedData.from_dict(raw["data"]),
            config_file=raw["config_file"],
            output_dir=raw["output_dir"],
            run_id=raw["run_id"],
            tracking_uri=raw["tracking_uri"],
        )
