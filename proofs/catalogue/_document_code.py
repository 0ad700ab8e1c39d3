"""The documents' attention code as callables the validate battery can run.

Seed 002 prints two PyTorch classes (``MultiHeadAttention`` at line 71, ``PrunableMultiHeadAttention``
at line 263): :func:`seed002_class` runs the code block exactly as printed and returns the class.
Seed 001 prints a NumPy multi-head example for one token (line 218): :func:`seed001_multihead` runs
the document's own lines on a sequence, with the battery's weights in place of the document's
random ones (its sizes d = 4, d_k = d_v = 2, h = 2 and its ``attention`` function are kept).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from ._doc import code_block_after, run_document_code

#: The line at or after which each seed 002 class's code block starts.
SEED002_CLASSES = {"MultiHeadAttention": 71, "PrunableMultiHeadAttention": 263}
#: The line of seed 001's multi-head example (its fence is the first one after it).
SEED001_MULTIHEAD_LINE = 215

# The assignments of the example's input and weights, replaced by the battery's.
_SEED001_INPUTS = re.compile(r"^(x_i|W_[QKV][12]|W_O)\s*=")


def seed002_class(name: str) -> tuple[int, type]:
    """(line of the code fence, the class) for ``"MultiHeadAttention"`` or ``"PrunableMultiHeadAttention"``."""
    if name not in SEED002_CLASSES:
        raise ValueError(f"name must be one of {sorted(SEED002_CLASSES)}, got {name!r}")
    start, code = code_block_after("002", SEED002_CLASSES[name])
    return start, run_document_code(code, f"seed002_line{start}")[name]


def seed001_multihead() -> tuple[int, Callable]:
    """(line of the code fence, ``fn(x, w_q, w_k, w_v, w_o, num_heads)``): seed 001's example on
    each sequence of ``x`` (B, N, D).

    Head i's W_Q, W_K, W_V are columns ``i*2:(i+1)*2`` of ``w_q``, ``w_k``, ``w_v`` (the battery's
    row convention); the document's lines then run unchanged but for its prints and the
    assignments of ``x_i`` and the weights. Its sizes are fixed (d = 4, two heads of width 2), so
    ``num_heads`` must be 2 and D must be 4. It returns whatever the document's ``output`` is.
    """
    start, code = code_block_after("001", SEED001_MULTIHEAD_LINE)
    kept = [line for line in code.splitlines()
            if not _SEED001_INPUTS.match(line) and not line.startswith(("print(", "np.random.seed"))]
    body = "\n".join(kept)

    def seed001_example(x, w_q, w_k, w_v, w_o, num_heads):
        if num_heads != 2 or x.shape[-1] != 4:
            raise ValueError(f"the document's example is written for d = 4 and h = 2, got D = {x.shape[-1]}, "
                             f"num_heads = {num_heads}")
        outputs = []
        for sequence in np.asarray(x).reshape(-1, *x.shape[-2:]):
            inputs = {"x_i": sequence, "W_O": np.asarray(w_o)}
            for i in (1, 2):
                cols = slice(2 * (i - 1), 2 * i)
                inputs.update({f"W_Q{i}": np.asarray(w_q)[:, cols], f"W_K{i}": np.asarray(w_k)[:, cols],
                               f"W_V{i}": np.asarray(w_v)[:, cols]})
            namespace = run_document_code(body, f"seed001_line{start}", inputs)
            outputs.append(namespace["output"])
        out = np.stack(outputs)
        return out.reshape(*x.shape[:-2], *out.shape[1:])

    return start, seed001_example


def run_battery(candidate, kind: str = "mha", **sizes):
    """``verify.validate.validate`` on a document's code, torch's RNG forked and seeded (a factory
    builds the same module every run). ``sizes`` (d_model, num_heads) are for a plain function."""
    from verify.validate import validate

    if sizes:
        from verify.validate.modules import as_mha_candidate

        candidate = as_mha_candidate(candidate, **sizes)
    try:
        import torch
    except ImportError:
        return validate(candidate, kind=kind, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return validate(candidate, kind=kind, seed=0)


def battery_evidence(result, what: str, *, adapted: bool = False):
    """The battery's property table as one piece of evidence (a counterexample when it failed).

    Properties that failed with the same status and diagnosis are listed once, their names joined;
    ``adapted=True`` marks the summary "ADAPTED" (the battery ran an adaptation of the document's
    code, not the code as printed)."""
    from ._kit import counterexample, numeric

    failed: dict[tuple[str, str], list[str]] = {}
    for p in result.properties:
        if p.status.value in ("FAIL", "ERROR", "TIMEOUT"):
            failed.setdefault((p.status.value, p.diagnosis), []).append(p.name)
    rows = [f"{', '.join(names)} {status} ({diagnosis})" for (status, diagnosis), names in failed.items()]
    for status in ("PASS", "NOT APPLICABLE"):
        names = [p.name for p in result.properties if p.status.value == status]
        if names:
            rows.append(f"{status}: {', '.join(names)}")
    verdict = "passes" if result.passed else "fails"
    summary = (("ADAPTED, not the document's code as printed: " if adapted else "")
               + f"the validate battery (kind={result.kind!r}) {verdict} on {what}: " + "; ".join(rows))
    data = {"validate": result.to_dict(), "faults": list(result.faults), "adapted": adapted}
    return numeric(summary, **data) if result.passed else counterexample(summary, **data)
