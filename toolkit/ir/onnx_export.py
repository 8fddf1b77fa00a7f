"""IR graph -> ONNX file (architecture.md, "export").

The graph is exported with the TorchScript exporter (``dynamo=False``) with a dynamic batch axis, the
result is checked against the graph with onnxruntime, and only then written (temp file + ``os.replace``,
so an error never leaves a half-written file).

Normalisation outside the model ("prepended"): the Normalize node that ``import_onnx(..., mean, std)``
put in front is NOT exported. The exported file therefore has the same input space as the file that
was imported (for VNN-COMP CIFAR models: normalised inputs), so the original VNN-LIB specs still apply
to it; the mean/std are recorded in the metadata (``tightcert.input_mean``/``tightcert.input_std``).
Consequently ``import_onnx(export_onnx(import_onnx(m, mean, std)), mean, std)`` is the same function
as ``import_onnx(m, mean, std)``. In-graph normalisation is an ordinary node and is exported.
"""
from __future__ import annotations

import copy
import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit import __version__
from toolkit.errors import BadInputError, BadModelError
from toolkit.fileio import atomic_path

from .graph import INPUT, Graph
from .nodes import Normalize

PARITY_TOL = 1e-4


class _Body(nn.Module):
    """The graph evaluated from ``start`` (the input, or the output of the prepended Normalize)."""

    def __init__(self, graph: Graph, start: str):
        super().__init__()
        self.nodes = graph.nodes
        self.edges, self.order, self.output, self.start = dict(graph.edges), list(graph.order), graph.output, start

    def forward(self, z):
        values = {self.start: z}
        for key in self.order:
            if key not in values:
                values[key] = self.nodes[key](*(values[k] for k in self.edges[key]))
        return values[self.output]


def prepended_key(graph: Graph) -> str | None:
    """Key of the Normalize node that carries ``--mean/--std`` (normalisation "prepended"), else None."""
    if graph.input_spec.normalization != "prepended":
        return None
    readers = graph.consumers()[INPUT]
    if len(readers) != 1 or not isinstance(graph.nodes[readers[0]], Normalize):
        raise BadInputError("the graph's normalisation is 'prepended' but its input is not read by a single "
                            "Normalize node")
    if readers[0] == graph.output:
        raise BadInputError("the graph is only its prepended Normalize node: nothing to export")
    return readers[0]


def export_onnx(graph: Graph, path, metadata: dict | None = None, opset=13, check=True, n_check=16,
                seed=0) -> float:
    """Write ``graph`` to ``path`` as ONNX with a dynamic batch axis. An imported graph keeps the original
    file's input and output names (and its input rank and dtype), so serving code that fed the original
    feeds the export; a graph built here gets "input" and "logits".

    metadata: extra key/value pairs for ``metadata_props`` (non-strings are JSON-encoded), e.g. how the
        model was trained; "producer" is set to "tightcert <version>".
    A prepended Normalize node is left out (see the module docstring): the file takes the input space of
    the originally imported file. Returns the max abs difference between onnxruntime on the written model
    and the graph on ``n_check`` random inputs (NaN when ``check`` is False); above 1e-4 is a
    BadModelError and nothing is written.
    """
    path = Path(path)
    if not isinstance(opset, int) or not 9 <= opset <= 20:
        raise BadInputError(f"opset must be an integer in 9..20, got {opset!r}")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise BadInputError(f"output directory does not exist: {path.parent}")
    g = copy.deepcopy(graph).float().cpu().eval()
    start = prepended_key(g) or INPUT
    body = _Body(g, start)
    names = (g.meta.get("onnx_input_name") or "input", g.meta.get("onnx_output_name") or "logits")
    model = _export_model(body, g.input_spec.shape, opset, names)
    _name_nodes(model, g)
    _set_metadata(model, graph, metadata)
    data = model.SerializeToString()
    diff = float("nan")
    if check:
        diff = _parity(data, g, body, start, n_check, seed, names[0])
        if not diff <= PARITY_TOL:
            raise BadModelError(f"exported model differs from the graph by {diff:.3g} (> {PARITY_TOL:g}); "
                                f"{path} not written")
    _write_atomic(path, data)
    return diff


def _export_model(body, shape, opset, names):
    import onnx

    in_name, out_name = "input", "logits"  # TorchScript renames numeric names ("0"): the file's come after
    buf = io.BytesIO()
    dummy = torch.zeros(1, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation notices
        try:
            torch.onnx.export(body, dummy, buf, dynamo=False, opset_version=opset, input_names=[in_name],
                              output_names=[out_name], do_constant_folding=True,
                              dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}})
        except Exception as e:
            raise BadModelError(f"ONNX export failed: {' '.join(str(e).split())[:200]}") from None
    model = onnx.load_model_from_string(buf.getvalue())
    _rename_value(model, in_name, names[0])
    _rename_value(model, out_name, names[1])
    onnx.checker.check_model(model)
    return model


def _rename_value(model, old: str, new: str) -> None:
    """Rename graph input/output ``old`` to ``new`` everywhere it is read or written."""
    if old == new:
        return
    taken = {v for n in model.graph.node for v in (*n.input, *n.output)} | {i.name for i in model.graph.initializer}
    if new in taken:
        raise BadModelError(f"cannot keep the name {new!r}: the exported graph already uses it")
    for v in (*model.graph.input, *model.graph.output):
        if v.name == old:
            v.name = new
    for n in model.graph.node:
        n.input[:] = [new if v == old else v for v in n.input]
        n.output[:] = [new if v == old else v for v in n.output]


def _name_nodes(model, graph):
    """Name exported ONNX nodes after the IR node they come from (torch names them /<key>/<Op>).

    The last ONNX node of an IR node (the one giving its output) gets the IR node's ONNX name, helper
    nodes (Shape, Gather, ... of a Flatten) get "<name>/<Op>", so a re-import shows the original names.
    """
    groups = {}
    for n in model.graph.node:
        m = re.match(r"^/(?:nodes/)?([^/]+)/", n.name)
        if m and m.group(1) in graph.nodes:
            groups.setdefault(m.group(1), []).append(n)
    taken = {n.name for n in model.graph.node}
    for key, ns in groups.items():
        node = graph.nodes[key]
        base = node.onnx_name if node.onnx_name and node.onnx_name != node.op else key  # keys are unique
        for i, n in enumerate(ns):
            new = base if i == len(ns) - 1 else f"{base}/{n.op_type}"
            j = 0
            while new in taken and new != n.name:
                j += 1
                new = f"{base}/{n.op_type}_{j}"
            taken.discard(n.name)
            n.name = new
            taken.add(new)


def _set_metadata(model, graph, metadata):
    spec = graph.input_spec
    props = {"producer": f"tightcert {__version__}",
             "tightcert.input_shape": json.dumps(list(spec.shape)),
             "tightcert.input_layout": spec.layout,
             "tightcert.input_value_range": json.dumps(list(spec.value_range))}
    if spec.normalization == "prepended":
        props["tightcert.input_normalization"] = "outside: feed (x - mean) / std"
    else:
        props["tightcert.input_normalization"] = spec.normalization
    if spec.mean is not None:
        props["tightcert.input_mean"] = json.dumps(list(spec.mean))
        props["tightcert.input_std"] = json.dumps(list(spec.std))
    if graph.meta.get("sha256"):
        props["tightcert.source_sha256"] = graph.meta["sha256"]
    for k, v in (metadata or {}).items():
        props[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    model.producer_name, model.producer_version = "tightcert", __version__
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _parity(data, graph, body, start, n_check, seed, in_name) -> float:
    """onnxruntime on the serialised model (a whole batch: the batch axis is dynamic) vs the graph."""
    from .onnx_import import run_onnxruntime

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(0.0, 1.0, (n_check, *graph.input_spec.shape)).astype(np.float32))
    with torch.no_grad():
        z = x if start == INPUT else graph.nodes[start](x)
        ours = body(z).double().reshape(n_check, -1).numpy()
    theirs = run_onnxruntime(data, in_name, z.numpy(), batch_one=False).astype(np.float64).reshape(n_check, -1)
    diff = np.abs(ours - theirs)
    return float("inf") if not np.isfinite(diff).all() else float(diff.max())


def _write_atomic(path: Path, data: bytes):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
