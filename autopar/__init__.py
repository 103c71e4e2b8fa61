"""autopar: automatic parallelization of PyTorch models, built on torch.fx."""
from autopar.api import autoparallelize, load_plan, optimizer, plan
from autopar.cluster import ClusterInfo
from autopar.options import PlanOptions
from autopar.runtime.checkpoint_io import export_safetensors, load_checkpoint, save_checkpoint
from autopar.solver.full_plan import Plan
from autopar.spec import ShardingSpec

__all__ = ["ClusterInfo", "Plan", "PlanOptions", "ShardingSpec", "autoparallelize", "export_safetensors",
           "load_checkpoint", "load_plan", "optimizer", "plan", "save_checkpoint"]
