"""Forward operators: slowness per cell (ns/m) -> first-arrival traveltimes (ns).

All operators share the contract of :class:`~latentinv.operators._base.ForwardOperator`.
"""
from ._base import ForwardOperator, JacobianFunction, PendingResponse
from .checks import check_operator
from .straight_ray import StraightRayOperator, straight_ray_matrix

__all__ = ["ForwardOperator", "JacobianFunction", "PendingResponse", "StraightRayOperator", "straight_ray_matrix",
           "ShortestPathOperator", "PyGimliOperator", "check_operator"]


def __getattr__(name):
    # late imports: the shortest-path module loads the compiled core, the pyGIMLi one loads pyGIMLi
    if name == "ShortestPathOperator":
        from .shortest_path import ShortestPathOperator
        return ShortestPathOperator
    if name == "PyGimliOperator":
        from .pygimli import PyGimliOperator
        return PyGimliOperator
    raise AttributeError(f"module 'latentinv.operators' has no attribute {name!r}")
