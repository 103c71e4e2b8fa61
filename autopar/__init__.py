"""autopar: automatic parallelization of PyTorch models, built on torch.fx."""
from autopar.api import autoparallelize, plan
from autopar.cluster import ClusterInfo
from autopar.spec import ShardingSpec

__all__ = ["ClusterInfo", "ShardingSpec", "autoparallelize", "plan"]
