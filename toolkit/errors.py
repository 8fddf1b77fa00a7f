"""One exception family for tightcert (architecture.md, "Errors").

Raised where a problem is found; only the CLI turns it into one line + exit status 2.
"""


class TightcertError(Exception):
    """Base class: a user-facing problem with a one-line message."""


class BadInputError(TightcertError):
    """Wrong argument value: negative or NaN epsilon, bad shape, unknown method, ..."""


class BadModelError(TightcertError):
    """The model file is missing, corrupt, or numerically broken (NaN weights)."""


class UnsupportedOpError(TightcertError):
    """An ONNX op (or IR node for a given bound method) that tightcert cannot handle."""

    def __init__(self, op, node, supported=None, method=None):
        self.op, self.node, self.method = op, node, method
        if method is not None:
            msg = f"method {method!r} does not support op {op} (node {node!r})"
        else:
            msg = f"unsupported ONNX op {op} (node {node!r})"
        if supported:
            msg += "; supported: " + ", ".join(sorted(supported))
        super().__init__(msg)


class BadDataError(TightcertError):
    """A dataset file or data root that is missing or malformed."""


class SoundnessError(TightcertError):
    """An internal contradiction, e.g. a sample certified yet broken by PGD."""
