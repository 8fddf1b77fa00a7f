"""Bound methods as small objects (issue 14): a method is an intermediate-bound strategy, a final relaxation
and options; ``compute_bounds``' keywords are options checked once, in the part that uses them.

Soundness of every method, and of compositions no method name spells, is in ``test_bounds_soundness``
(its ``VARIANTS``); here: what each name is made of, where each option lands, and the errors."""
from __future__ import annotations

import pytest
import torch

from nets import random_conv
from toolkit.bounds import (METHODS, OPTIONS, AlphaOptions, BoundMethod, Intermediate, bound_method,
                            compute_bounds)
from toolkit.errors import BadInputError
from toolkit.spec import InputSet

#: the table in ``toolkit/bounds/methods.py``'s docstring: intermediate mode, final relaxation, α, probabilistic
PARTS = {"ibp": ("ibp", None, False, False), "crown-ibp": ("ibp", "crown", False, False),
         "fastlin": ("fastlin", "fastlin", False, False), "crown": ("crown", "crown", False, False),
         "alpha-crown": ("crown", "crown", True, False), "cp-proj": ("proj", "fastlin", False, True)}


@pytest.mark.parametrize("name", METHODS)
def test_each_method_name_is_its_parts(name):
    m = bound_method(name)
    assert (m.intermediate.mode, m.relaxation, m.alpha is not None, m.probabilistic) == PARTS[name]
    assert m.name == name


def test_options_land_in_the_part_that_uses_them():
    gen = torch.Generator()
    m = bound_method("alpha-crown", alpha_iters=3, alpha_lr=0.5, alpha_scope="final", intersect_ibp=True,
                     chunk_elems=64, fastlin_form="backward", generator=gen)
    assert m.alpha == AlphaOptions(iters=3, lr=0.5, scope="final")
    assert m.intermediate == Intermediate("crown", intersect_ibp=True, chunk_elems=64, fastlin_form="backward")
    assert m.intermediate.generator is gen
    # a method that does not optimise slopes accepts α options (one option set for several methods) and drops them
    assert bound_method("crown", alpha_iters=3).alpha is None
    # options applied to an object override its parts and keep the rest
    again = bound_method(m, alpha_iters=7, intersect_ibp=False)
    assert (again.alpha.iters, again.alpha.scope, again.intermediate.intersect_ibp) == (7, "final", False)
    assert again.intermediate.chunk_elems == 64 and m.alpha.iters == 3   # frozen: m itself unchanged


def test_methods_compare_and_hash_by_value():
    a = bound_method("fastlin", intersect_ibp=True, generator=torch.Generator())
    b = bound_method("fastlin", intersect_ibp=True)
    assert a == b and hash(a) == hash(b)          # the generator is state, not configuration
    assert a != bound_method("fastlin") and len({a, b, bound_method("crown")}) == 2


@pytest.mark.parametrize("bad,message", [
    (dict(alpha_itres=3), "unknown bound option(s) alpha_itres"),
    (dict(alpha_iters=-1), "alpha iterations must be >= 0"),
    (dict(alpha_scope="some"), "unknown alpha scope 'some'"),
    (dict(fastlin_form="sideways"), "unknown Fast-Lin form 'sideways'"),
    (dict(proj=0), "projections must be >= 1"),
    (dict(chunk_elems=0), "chunk size must be >= 1"),
])
def test_bad_options_are_one_clear_error_even_where_unused(bad, message):
    for name in ("crown", "alpha-crown"):
        with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            bound_method(name, **bad)


def test_unknown_method_names_the_choices():
    with pytest.raises(BadInputError, match="unknown bound method 'crwon'; choose from ibp, crown-ibp"):
        compute_bounds(None, None, None, "crwon")
    assert set(OPTIONS) >= {"alpha_iters", "alpha_scope", "intersect_ibp", "proj", "fastlin_form"}


def test_an_object_and_its_name_give_the_same_bounds():
    """``compute_bounds`` takes a name with options or a method object; a composition (CROWN's final pass over
    Fast-Lin's intermediate bounds) is a method like any other and matches building the pieces by hand."""
    g = random_conv(seed=0, k=5)
    x = torch.rand(3, *g.input_spec.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inp, y = InputSet.from_eps(x, 0.05, clip=(0.0, 1.0)), torch.tensor([0, 1, 2])
    by_name = compute_bounds(g, inp, None, "crown", labels=y, intersect_ibp=True).lower
    by_object = bound_method("crown", intersect_ibp=True).bound(g, inp, labels=y).lower
    assert torch.equal(by_name, by_object)
    composed = BoundMethod("crown-over-fastlin", Intermediate("fastlin"), "crown")
    fastlin = compute_bounds(g, inp, None, "fastlin", labels=y)
    by_hand = compute_bounds(g, inp, None, "crown", labels=y, bounds=fastlin.bounds).lower
    assert torch.equal(compute_bounds(g, inp, None, composed, labels=y).lower, by_hand)


def test_ibp_alone_keeps_only_what_its_readers_use():
    """IBP by itself drops a node's bounds after their last use unless a relaxation would need them (what
    ``sanitize`` checks and the training losses read) or the spec merge does; the kept bounds and the result
    equal the full pass's, and a NaN in a sample still leaves it uncertified (and only it)."""
    from toolkit.bounds import needs_bounds
    from toolkit.bounds.ibp import ibp_bounds, ibp_spec_bound
    from toolkit.spec import margin_spec

    g = random_conv(seed=1, residual=True, normalize=True)
    x = torch.rand(3, *g.input_spec.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inp, y = InputSet.from_eps(x, 0.05, clip=(0.0, 1.0)), torch.tensor([0, 1, 2])
    res = compute_bounds(g, inp, None, "ibp", labels=y)
    full = ibp_bounds(g, inp.lo, inp.hi)
    kept = {*needs_bounds(g), g.output, *g.edges[g.output]}
    assert set(res.bounds) == kept | {"input"} and set(full) > set(res.bounds)
    assert "relu1" in full and "relu1" not in res.bounds  # read by conv2 and by the residual Add, then dropped
    assert all(torch.equal(res.bounds[k][j], full[k][j]) for k in res.bounds for j in range(2))
    assert torch.equal(res.lower, ibp_spec_bound(g, full, margin_spec(y, 10, dtype=x.dtype)))
    x_bad = x.clone()
    x_bad[1, 0, 0, 0] = float("nan")
    bad = compute_bounds(g, InputSet(x_bad, x_bad - 0.05, x_bad + 0.05), None, "ibp", labels=y).lower
    assert torch.isinf(bad[1]).all() and torch.isfinite(bad[[0, 2]]).all()
