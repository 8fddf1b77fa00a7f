"""Where datasets live. Never downloads anything (architecture.md, "Never")."""
from __future__ import annotations

import os
from pathlib import Path

from toolkit.errors import BadDataError

ENV_VAR = "TIGHTCERT_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The bundled MNIST subset (first 1,000 test images) written by models/train_default.py.
BUNDLED_MNIST = REPO_ROOT / "models" / "mnist_test_1000.npz"


def default_roots() -> list[Path]:
    """Candidate data roots when none is given: ``../shared/data`` beside the repo, then beside the cwd."""
    seen, out = set(), []
    for base in (REPO_ROOT, Path.cwd()):
        p = (base.parent / "shared" / "data").resolve()
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def resolve_data_root(data_root=None) -> Path:
    """The data root: the argument, else $TIGHTCERT_DATA, else the first default root that exists."""
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise BadDataError(f"data root {root} does not exist or is not a folder")
        return root
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise BadDataError(f"data root {root} (from ${ENV_VAR}) does not exist or is not a folder")
        return root
    for root in default_roots():
        if root.is_dir():
            return root
    tried = ", ".join(str(p) for p in default_roots())
    raise BadDataError(f"no data root found (tried {tried}); pass --data-root or set ${ENV_VAR}")
