"""The bound engine (imports nothing of train, certify, report or cli).

``compute_bounds(graph, inp, C, method)`` → ``BoundResult`` with sound lower bounds of C·f over the input
set and the relaxation's optimum for the regularizers. ``methods`` defines the methods as small objects
(``bound_method(name, **options)``: intermediate-bound strategy + final relaxation + options); ``engine``
computes their pieces; ``branching`` holds the bounds of split domains for branch and bound.
"""
from .branching import beta_bounds, domain_bounds
from .engine import intermediate_bounds, needs_bounds
from .ibp import ibp_bounds
from .methods import (METHODS, OPTIONS, AlphaOptions, BoundMethod, Intermediate, bound_method, compute_bounds,
                      margin_lower_bound)
from .result import BoundResult, LayerOptimum, relaxed_forward

__all__ = ["beta_bounds", "domain_bounds", "METHODS", "OPTIONS", "AlphaOptions", "BoundMethod", "Intermediate",
           "bound_method", "compute_bounds", "intermediate_bounds", "margin_lower_bound", "needs_bounds",
           "ibp_bounds", "BoundResult", "LayerOptimum", "relaxed_forward"]
