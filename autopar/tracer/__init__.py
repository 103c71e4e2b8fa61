"""Tracer stage: model -> annotated fx graph (see ``autopar.tracer.meta`` and ``autopar.tracer.ops``)."""
from autopar.tracer.api import trace
from autopar.tracer.colo_tracer import ColoTracer
from autopar.tracer.proxy import TraceError

__all__ = ["trace", "ColoTracer", "TraceError"]
