"""``tightcert info MODEL.onnx``: import a model and show its IR, input spec and onnxruntime parity."""
from __future__ import annotations

from toolkit.cli.common import add_norm, add_seed

NAME = "info"
HELP = "import an ONNX model and print its layer graph, input spec and onnxruntime parity"
DESCRIPTION = """Import an ONNX classifier into tightcert's layer graph and print one row per IR node
(key, op, ONNX name, inputs, output shape, parameters, detail), the input spec (shape, layout, value range,
normalisation) and the largest difference from onnxruntime on random inputs in [0, 1].

Give --mean/--std when the model expects normalised inputs but the normalisation is not in the file
(e.g. the VNN-COMP CIFAR models): a Normalize node is then prepended and the graph takes raw [0, 1] pixels."""


def add_arguments(p):
    p.add_argument("model", help="ONNX model file")
    add_norm(p)
    p.add_argument("--format", default="github",
                   help="table format, any tabulate format: github, plain, simple, grid, ... (default: github)")
    p.add_argument("--n-check", type=int, default=16,
                   help="random inputs for the onnxruntime parity check (default: 16; 0 skips it)")
    add_seed(p)


def _fmt_values(values):
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def describe(graph, table_format="github") -> str:
    """The text ``tightcert info`` prints for an imported graph."""
    from tabulate import tabulate

    spec, meta = graph.input_spec, graph.meta
    rows = graph.summary_rows()
    lines = [f"model: {meta.get('source', '?')}",
             f"sha256: {meta.get('sha256', '?')}   opset: {meta.get('opset', '?')}   ONNX input: "
             f"{meta.get('onnx_input_name', '?')!r} {meta.get('onnx_input_shape', '?')}",
             f"input: shape {'×'.join(map(str, spec.shape))} per sample (batch dynamic), layout {spec.layout}, "
             f"value range [{spec.value_range[0]:g}, {spec.value_range[1]:g}]"]
    norm = {"none": "none in the graph (the graph takes its input as is)",
            "in-graph": "in the graph",
            "prepended": "prepended from --mean/--std (the graph takes raw pixels)"}.get(spec.normalization,
                                                                                       spec.normalization)
    if spec.mean is not None:
        norm += f", mean {_fmt_values(spec.mean)}, std {_fmt_values(spec.std)}"
    lines.append(f"normalisation: {norm}")
    lines.append("")
    lines.append(tabulate(rows, headers=["node", "op", "ONNX name", "inputs", "output shape", "params", "detail"],
                          tablefmt=table_format, intfmt=","))
    lines.append("")
    n_params = sum(r[5] for r in rows)
    lines.append(f"{len(rows)} nodes, {n_params:,} parameters, {graph.output_size()} outputs")
    diff = meta.get("ort_max_abs_diff")
    if diff is None:
        lines.append("onnxruntime parity: not checked")
    else:
        lines.append(f"onnxruntime parity: max |graph - onnxruntime| = {diff:.3g} on {meta.get('ort_n_check', '?')} "
                     f"random inputs in [0, 1] (limit 1e-4)")
    return "\n".join(lines)


def run(args) -> int:
    from tabulate import tabulate_formats

    from toolkit.errors import BadInputError
    from toolkit.ir.onnx_import import import_onnx

    if args.format not in tabulate_formats:
        raise BadInputError(f"unknown --format {args.format!r}; choose one of: {', '.join(tabulate_formats)}")
    if args.n_check < 0:
        raise BadInputError(f"--n-check must be >= 0, got {args.n_check}")
    graph = import_onnx(args.model, mean=args.mean, std=args.std, check=args.n_check > 0,
                        n_check=max(args.n_check, 1), seed=args.seed)
    print(describe(graph, args.format))
    return 0
