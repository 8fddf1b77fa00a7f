"""The clean guard's and keep-best's verdicts as text (``toolkit.train.guard`` keeps the record; this module only
words it, so that ``tightcert report`` can print it without importing the training code)."""
from __future__ import annotations

#: The guard's images unless --guard-data names others (and what records older than that field measured).
SOURCE = "held-out training images"


def stop_message(g: dict) -> str:
    """Why the guard stopped training (its record, or its summary)."""
    return (f"clean-accuracy guard: clean error {g['stopped_clean_err']:.2f} % on {g['n']} {g.get('source', SOURCE)} "
            f"after epoch {g['stopped_at']} exceeds {g['start_clean_err']:.2f} % + {g['tolerance']:g}; "
            f"rolled back to epoch {g['best_epoch']}")


def verdict_text(verdict: dict | None) -> str:
    """The lines printed under the before/after table (and by ``tightcert report``): the clean guard's verdict,
    then what keep-best handed back; "" for a run without the guard."""
    if verdict is None:
        return ""
    text = (f"\n{stop_message(verdict)}." if verdict.get("stopped_at") is not None else
            f"\n(clean-accuracy guard: {verdict['n']} {verdict.get('source', SOURCE)}, clean error "
            f"{verdict['start_clean_err']:.2f} % at the start, limit +{verdict['tolerance']:g}; never exceeded)")
    if verdict.get("keep_best") and verdict.get("kept_epoch") is not None:
        kept = verdict["kept_epoch"]
        what = ("the starting weights: no epoch certified more of them" if kept == 0 else
                f"epoch {kept}'s weights ({verdict['best_cert_err']:.2f} %)")
        text += (f"\n(keep-best: certified error {verdict['start_cert_err']:.2f} % at the start on the same held-out "
                 f"images at eps {verdict['eps']:g}; handed back {what})")
    return text
