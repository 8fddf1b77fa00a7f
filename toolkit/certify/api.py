"""``certify_model``: the path-based entry point behind ``tightcert certify`` (import, load, certify)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from toolkit.errors import BadModelError
from toolkit.report import check_out

from .checks import check_eps, order_methods, resolve_device
from .core import CertifyResult, _as_list, certify


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def certify_model(model, data, eps=None, methods=("crown-ibp",), *, data_root=None, split: str = "test",
                  n=None, indices=None, mean=None, std=None, out=None, **kw) -> CertifyResult:
    """Import ONNX ``model``, load ``data`` (a dataset name or an .npz path, see ``toolkit.data``) and
    ``certify`` it. Cheap checks (methods, ε, device, --out) come first, so a bad request fails fast
    and leaves no file behind. Remaining keyword arguments go to ``certify``."""
    from toolkit.data import load_dataset
    from toolkit.ir.onnx_import import import_onnx

    order_methods(methods)
    if kw.get("shard") is not None:
        from .shard import parse_shard

        parse_shard(kw["shard"])
    if eps is not None:
        check_eps(_as_list(eps), None)
    resolve_device(kw.get("device", "cpu"))
    if out is not None:
        check_out(out, {})
    path = Path(model)
    if not path.is_file():
        raise BadModelError(f"model file {path} does not exist")
    graph = import_onnx(path, mean=mean, std=std)
    dataset = load_dataset(data, split, data_root, n, indices)
    return certify(graph, dataset, eps, methods, out=out, model_name=path.stem, model_path=str(path),
                   model_sha256=sha256_file(path), data_name=str(data), split=split, mean=mean, std=std, **kw)
