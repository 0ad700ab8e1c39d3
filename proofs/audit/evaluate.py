"""Recompute an expression tree exactly: SymPy rationals from the decimals as written, ``exp``
and ``sqrt`` kept symbolic until judged at :data:`DIGITS` significant digits.

Values are SymPy scalars or ``sympy.Matrix``. A vector written as a column where the formula
needs a row (``x_1 W^Q`` with ``x_1`` printed 4 x 1) is read as the row it stands for, and
the reading is reported in ``notes`` (the documents write row vectors as columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import sympy as sp

from .parse import ParseError

#: Significant digits at which exact values are compared with printed ones.
DIGITS = 50
#: Largest exponent evaluated exactly (10^(10^10) in a document must not exhaust memory).
MAX_EXPONENT = 4096
#: Largest exact result of a power, in digits.
MAX_DIGITS = 100_000


class Unresolved(LookupError):
    """The expression uses a name with no value (yet): the statement is UNCHECKED."""


@dataclass
class Evaluator:
    """Evaluate trees against ``values`` (name -> value); ``literal`` may replace a printed
    literal by another value (a carried quantity's correct value); ``notes`` collects the
    readings made on the way (column vectors taken as rows, O(.) read as its count)."""

    values: Mapping[str, object]
    literal: Callable[[tuple], object | None] = lambda node: None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def __call__(self, node):
        kind = node[0]
        if kind in ("num", "mat"):
            swapped = self.literal(node)
            if swapped is not None:
                return swapped
            if kind == "num":
                return node[1]
            return sp.Matrix([[e[1] for e in row] for row in node[1]])
        if kind == "name":
            if node[1] not in self.values:
                raise Unresolved(node[1])
            return self.values[node[1]]
        if kind == "neg":
            return -self(node[1])
        if kind == "T":
            value = self(node[1])
            return value.T if isinstance(value, sp.MatrixBase) else value
        if kind == "pow":
            base = self(node[1])
            saved, self.literal = self.literal, (lambda n: None)  # an exponent is never a carried value
            try:
                power = self(node[2])
            finally:
                self.literal = saved
            if isinstance(base, sp.MatrixBase) or isinstance(power, sp.MatrixBase):
                raise ParseError("a matrix power is not a worked number the audit reads")
            too_long = base.is_Rational and power.is_Integer and \
                max(len(str(base.p)), len(str(base.q))) * abs(int(power)) > MAX_DIGITS
            if too_long or abs(power) > MAX_EXPONENT:
                raise ParseError(f"the exponent {power} is too large to evaluate exactly (at most {MAX_EXPONENT})")
            return base ** power
        if kind == "call":
            return self.call(node[1], [self(a) for a in node[2]])
        if kind == "op":
            return self.op(node[1], self(node[2]), self(node[3]))
        raise ParseError(f"cannot evaluate {kind}")

    def call(self, fn: str, args: list):
        if fn in ("exp", "sqrt"):
            (x,) = args
            f = sp.exp if fn == "exp" else sp.sqrt
            return x.applyfunc(f) if isinstance(x, sp.MatrixBase) else f(x)
        if fn == "O":
            self.note("O(.) read as the count inside it")
            return args[0]
        if fn == "softmax":
            (z,) = args
            if not isinstance(z, sp.MatrixBase):
                raise ParseError("softmax of a scalar")
            rows = z.tolist() if z.rows > 1 and z.cols > 1 else [list(z)]
            out = []
            for row in rows:
                e = [sp.exp(v) for v in row]
                s = sum(e)
                out.append([v / s for v in e])
            return sp.Matrix(out)
        if fn == "concat":
            ms = [a if isinstance(a, sp.MatrixBase) else sp.Matrix([[a]]) for a in args]
            if len({m.rows for m in ms}) != 1:
                raise ParseError(f"Concat of matrices with {[m.rows for m in ms]} rows")
            return sp.Matrix.hstack(*ms)
        raise ParseError(f"cannot evaluate {fn}")

    def op(self, sym: str, a, b):
        ma, mb = isinstance(a, sp.MatrixBase), isinstance(b, sp.MatrixBase)
        if sym in "+-":
            if ma and mb and a.shape != b.shape:
                if is_vector(a) and is_vector(b) and len(a) == len(b):
                    b = b.reshape(*a.shape)
                    self.note("a column vector and a row vector added as the same vector")
                else:
                    raise ParseError(f"{sym} of shapes {a.shape} and {b.shape}")
            elif ma != mb:
                raise ParseError(f"{sym} of a matrix and a scalar")
            return a + b if sym == "+" else a - b
        if sym == "/":
            if mb:
                if b.shape == (1, 1):
                    b = b[0, 0]
                else:
                    raise ParseError("division by a matrix")
            return a / b
        if sym == "dot" and ma and mb and is_vector(a) and is_vector(b):
            if len(a) != len(b):
                raise ParseError(f"dot product of vectors of lengths {len(a)} and {len(b)}")
            return sum(x * y for x, y in zip(a, b))
        if not (ma and mb):
            return a * b
        if a.cols != b.rows:
            if a.cols == 1 and a.rows == b.rows:
                self.note("a column vector written for a row vector: read as the row")
                a = a.T
            elif b.rows == 1 and b.cols == a.cols and a.cols == 1:
                b = b.T
            else:
                raise ParseError(f"product of shapes {a.shape} and {b.shape}")
        return a * b


def is_vector(m) -> bool:
    return isinstance(m, sp.MatrixBase) and (m.rows == 1 or m.cols == 1)


def entries(value) -> list:
    """The entries of a value in row order (a scalar is one entry)."""
    return list(value) if isinstance(value, sp.MatrixBase) else [value]


def shape(value) -> tuple[int, int]:
    return value.shape if isinstance(value, sp.MatrixBase) else (1, 1)


def numeric(x, digits: int = DIGITS) -> sp.Float:
    """``x`` at ``digits`` significant digits (exact values are SymPy expressions)."""
    return sp.N(x, digits)
