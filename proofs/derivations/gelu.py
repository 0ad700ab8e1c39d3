r"""Derivation 9: a certified bound on the error of the tanh approximation of GELU.

    err(x) = x Phi(x) - x/2 (1 + tanh(u(x))),   u(x) = sqrt(2/pi) (x + 0.044715 x^3)
           = x/2 (erf(x/sqrt 2) - tanh(u(x)))

Certification (all of it runs in well under a second):

1. ``err`` is even, so x >= 0 suffices (SymPy).
2. Tail, x >= 6: erfc(t) <= e^{-t^2}/(t sqrt(pi)) and 1 - tanh(u) < 2 e^{-2u} give
   |err(x)| <= g(x) = e^{-x^2/2}/sqrt(2 pi) + x e^{-2u(x)}; g is decreasing for x >= 1 and
   g(6) < 1e-8 (interval arithmetic).
3. [0, 6]: branch and bound with the mean-value form
   err(X) in err(m) + err'(X) (X - m) on each interval X (midpoint m), in ``mpmath.iv``
   interval arithmetic; an interval is discarded once its enclosure of |err| is below the
   best lower bound found plus a tolerance. ``err'`` is derived and checked by SymPy.
4. Lower bound: a rigorous enclosure of |err(x*)| at the numerical maximiser x*.

``mpmath.iv`` has no working interval erf, so erf enters through point values: erf is
increasing, so erf([a, b]) is contained in [erf(a), erf(b)], each computed by mpmath at
113 bits and widened by 2^-90 (mpmath evaluates erf to within a few ulps at the working
precision; the widening is 2^23 times larger). tanh is evaluated as 1 - 2/(e^{2u} + 1)
in interval arithmetic. Everything else is ``mpmath.iv``. The constant 0.044715 is the
decimal number of the formula (enclosed by ``iv.mpf('0.044715')``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import mpmath
import sympy as sp
from mpmath import iv, mpf

from ..claims import Method
from ..derivation import Custom, Derivation, Step, Symbolic
from ._registry import register

__all__ = ["gelu_tanh_error", "certify_gelu_tanh_error", "GeluCertificate"]

TAIL_START = 6
TOLERANCE = mpf("1e-9")
_PREC = 113
_WIDEN = mpf(2) ** -90

x_ = sp.Symbol("x", real=True)
_A = sp.Rational(44715, 10**6)
_C = sp.sqrt(2 / sp.pi)
U_EXPR = _C * (x_ + _A * x_**3)
ERR_EXPR = x_ * (1 + sp.erf(x_ / sp.sqrt(2))) / 2 - x_ * (1 + sp.tanh(U_EXPR)) / 2
ERR_FORM = x_ / 2 * (sp.erf(x_ / sp.sqrt(2)) - sp.tanh(U_EXPR))
DERIV_FORM = (sp.erf(x_ / sp.sqrt(2)) - sp.tanh(U_EXPR)) / 2 + x_ / 2 * (
    _C * sp.exp(-x_**2 / 2) - (1 - sp.tanh(U_EXPR) ** 2) * _C * (1 + 3 * _A * x_**2))


@dataclass(frozen=True)
class GeluCertificate:
    """The certified enclosure of max_x |err(x)| and how it was obtained."""

    lower: float  # a rigorous lower bound on max |err| (|err(x*)| rounded down)
    upper: float  # a rigorous upper bound on max |err| over the real line
    argmax: float  # x* > 0 (err is even: also -x*)
    err_at_argmax: float  # err(x*) (negative: the tanh formula overshoots)
    intervals: int  # intervals examined by branch and bound on [0, TAIL_START]
    tail_bound: float  # sup_{|x| >= TAIL_START} |err(x)| <= tail_bound
    secondary_max: tuple[float, float]  # the other local maximum of |err| on x > 0: (x, |err|)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@contextlib.contextmanager
def _precision():
    """Work at _PREC bits in both mpmath contexts, restoring the callers' precisions after."""
    saved = (mpmath.mp.prec, iv.prec)
    mpmath.mp.prec, iv.prec = _PREC, _PREC
    try:
        yield
    finally:
        mpmath.mp.prec, iv.prec = saved


def _consts():
    return {"c": iv.sqrt(2 / iv.pi), "a": iv.mpf("0.044715"), "sqrt2": iv.sqrt(2),
            "inv_sqrt_2pi": 1 / iv.sqrt(2 * iv.pi)}


def _erf_point(t) -> "iv.mpf":
    v = mpmath.erf(mpf(t))
    return iv.mpf([v - _WIDEN, v + _WIDEN])


def _erf_interval(t: "iv.mpf") -> "iv.mpf":
    """erf over an interval, by monotonicity."""
    lo, hi = _erf_point(t.a), _erf_point(t.b)
    return iv.mpf([lo.a, hi.b])


def _tanh_interval(u: "iv.mpf") -> "iv.mpf":
    """tanh over an interval, by monotonicity, each end as 1 - 2 / (e^{2u} + 1)."""
    lo = 1 - 2 / (iv.exp(2 * iv.mpf(u.a)) + 1)
    hi = 1 - 2 / (iv.exp(2 * iv.mpf(u.b)) + 1)
    return iv.mpf([lo.a, hi.b])


def _u(xi, k):
    return k["c"] * (xi + k["a"] * xi**3)


def _err(xi, k):
    """Interval extension of err on xi >= 0 (u is increasing there)."""
    return xi / 2 * (_erf_interval(xi / k["sqrt2"]) - _tanh_interval(_u(xi, k)))


def _err_prime(xi, k):
    t = _tanh_interval(_u(xi, k))
    du = k["c"] * (1 + 3 * k["a"] * xi**2)
    return (_erf_interval(xi / k["sqrt2"]) - t) / 2 + xi / 2 * (k["c"] * iv.exp(-xi**2 / 2) - (1 - t**2) * du)


def _abs_upper(y) -> mpf:
    return max(abs(mpf(y.a)), abs(mpf(y.b)))


def _abs_lower(y) -> mpf:
    a, b = mpf(y.a), mpf(y.b)
    return mpf(0) if a <= 0 <= b else min(abs(a), abs(b))


def _point_err(x, k):
    return _err(iv.mpf(x), k)


def _maximiser(k, guess: str) -> mpf:
    return mpmath.findroot(lambda x: mpf(_err_prime(iv.mpf(x), k).mid), mpf(guess))


@functools.lru_cache(maxsize=None)
def certify_gelu_tanh_error(tail_start: int = TAIL_START, tol: str = "1e-9") -> GeluCertificate:
    """Certified enclosure [lower, upper] of max_{x in R} |err(x)|; pure, cached."""
    with _precision():
        return _certify(tail_start, mpf(tol))


def _certify(tail_start: int, tol: mpf) -> GeluCertificate:
    k = _consts()
    x_star = _maximiser(k, "2.7")
    e_star = _point_err(x_star, k)
    best, best_at = _abs_lower(e_star), x_star
    x_two = _maximiser(k, "1.36")
    second = _abs_lower(_point_err(x_two, k))

    upper = mpf(0)
    pieces = 64
    stack = [(mpf(tail_start) * j / pieces, mpf(tail_start) * (j + 1) / pieces) for j in range(pieces)]
    count = 0
    while stack:
        lo, hi = stack.pop()
        count += 1
        if count > 200000:
            raise RuntimeError("GELU branch and bound did not converge")
        xi, m = iv.mpf([lo, hi]), (lo + hi) / 2
        fm = _point_err(m, k)
        if _abs_lower(fm) > best:  # every point enclosure is a rigorous lower bound of the max
            best, best_at = _abs_lower(fm), m
        enclosure = fm + _err_prime(xi, k) * (xi - m)
        # the direct extension is sometimes tighter far from the maximiser
        bound = min(_abs_upper(enclosure), _abs_upper(_err(xi, k)))
        if bound <= best + tol:
            upper = max(upper, bound)
            continue
        stack += [(lo, m), (m, hi)]
    tail = _tail_bound(tail_start, k)
    upper = max(upper, tail)
    return GeluCertificate(float(mpmath.mpf(best)), float(upper), float(best_at), float(_point_err(best_at, k).mid),
                           count, float(tail), (float(x_two), float(second)))


def _tail_bound(x0, k) -> mpf:
    """g(x0) = e^{-x0^2/2}/sqrt(2 pi) + x0 e^{-2u(x0)}, an upper bound of |err| on [x0, oo)."""
    xi = iv.mpf(x0)
    g = k["inv_sqrt_2pi"] * iv.exp(-xi**2 / 2) + xi * iv.exp(-2 * _u(xi, k))
    return mpf(g.b)


def _tail_decreasing(x0: int = 1) -> tuple[bool, str]:
    """g'(x) < 0 for x >= 1: -x e^{-x^2/2}/sqrt(2pi) < 0, and 1 - 2 x u'(x) < 0 since it is < 0 at
    x = 1 (interval arithmetic) and decreases for x > 0 (its derivative is negative, SymPy)."""
    with _precision():
        k = _consts()
        xi = iv.mpf(x0)
        at_one = 1 - 2 * xi * k["c"] * (1 + 3 * k["a"] * xi**2)
        lo, hi = mpf(at_one.a), mpf(at_one.b)
    x = sp.Symbol("x", positive=True)
    factor = 1 - 2 * x * _C * (1 + 3 * _A * x**2)
    slope = sp.diff(factor, x)
    signs = {"d/dx (1 - 2x u'(x)) < 0": slope.is_negative is True,
             "-x e^{-x^2/2}/sqrt(2 pi) < 0": (-x * sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)).is_negative is True,
             "e^{-2u} > 0": sp.exp(-2 * _C * (x + _A * x**3)).is_positive is True}
    ok = hi < 0 and all(signs.values())
    return ok, (f"1 - 2 x u'(x) at x = 1 lies in [{float(lo):.6f}, {float(hi):.6f}] < 0; derivative {slope}; "
                + "; ".join(f"{k_}: {v}" for k_, v in signs.items()))


def _tail_inequality() -> tuple[bool, str]:
    """The pieces of |err(x)| <= g(x) for x > 0, each checked by SymPy.

    With a = erf(x/sqrt 2), b = tanh u in (0, 1): |a - b| <= (1 - a) + (1 - b) (witnesses
    2(1 - a), 2(1 - b) for the two signs); a < 1 as erfc = (2/sqrt pi) int_y^oo e^{-t^2} dt of a
    positive integrand; b < 1 as 1 - tanh u = 2/(e^{2u} + 1) > 0; u > 0 for x > 0; and the
    algebra (x/2) e^{-x^2/2} / ((x/sqrt 2) sqrt pi) = e^{-x^2/2}/sqrt(2 pi) turning the erfc bound
    (two lines above) into the first term of g.
    """
    x, y, t = sp.Symbol("x", positive=True), sp.Symbol("y", positive=True), sp.Symbol("t", real=True)
    p, r = sp.symbols("p r", nonnegative=True)  # p = 1 - a, r = 1 - b
    a, b = 1 - p, 1 - r
    u = _C * (x + _A * x**3)
    erfc_integral = (2 / sp.sqrt(sp.pi)) * sp.Integral(sp.exp(-t**2), (t, y, sp.oo))
    facts = {
        "(1-a)+(1-b) - (a-b) = 2(1-a) >= 0": sp.expand((p + r) - (a - b) - 2 * p) == 0 and (2 * p).is_nonnegative,
        "(1-a)+(1-b) - (b-a) = 2(1-b) >= 0": sp.expand((p + r) - (b - a) - 2 * r) == 0 and (2 * r).is_nonnegative,
        "erfc(y) = (2/sqrt pi) int_y^oo e^{-t^2} dt": sp.simplify((erfc_integral.doit() - sp.erfc(y)).rewrite(sp.erf)) == 0,
        "e^{-t^2} > 0": sp.exp(-t**2).is_positive is True,
        "erf(x/sqrt 2) > 0": sp.erf(x / sp.sqrt(2)).is_positive is True,
        "u(x) > 0, tanh u > 0": u.is_positive is True and sp.tanh(u).is_positive is True,
        "1 - tanh u = 2/(e^{2u} + 1) > 0": (sp.simplify((1 - sp.tanh(u)).rewrite(sp.exp) - 2 / (sp.exp(2 * u) + 1)) == 0
                                            and (2 / (sp.exp(2 * u) + 1)).is_positive is True),
        "(x/2) e^{-x^2/2}/((x/sqrt 2) sqrt pi) = e^{-x^2/2}/sqrt(2 pi)": sp.simplify(
            x / 2 * sp.exp(-x**2 / 2) / (x / sp.sqrt(2) * sp.sqrt(sp.pi)) - sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)) == 0,
    }
    failed = [k for k, ok in facts.items() if not ok]
    return not failed, ("; ".join(facts) + ": all hold") if not failed else f"failed: {failed}"


def _outward(value: float, rounding: str) -> Decimal:
    """``value`` rounded outward to 7 significant digits (``"floor"`` or ``"ceiling"``)."""
    d = Decimal(value)
    quantum = Decimal(1).scaleb(d.adjusted() - 6)
    return d.quantize(quantum, rounding=ROUND_FLOOR if rounding == "floor" else ROUND_CEILING)


def _tex(d: Decimal) -> str:
    mantissa, exponent = f"{d:.6e}".split("e")
    return f"{mantissa} \\times 10^{{{int(exponent)}}}"


def _tail_value() -> tuple[bool, str]:
    with _precision():
        g6 = _tail_bound(TAIL_START, _consts())
    return g6 < mpf("1e-8"), f"g({TAIL_START}) <= {float(g6):.3e} (interval arithmetic)"


@register("gelu-tanh-error", "Certified error of the tanh approximation of GELU")
def gelu_tanh_error() -> Derivation:
    """max_x |x Phi(x) - tanh-GELU(x)| enclosed rigorously; about 4.73e-4 at x = +-2.70."""
    t = sp.Symbol("t", positive=True)
    u = sp.Symbol("u", real=True)
    # The enclosure is computed here (cached, well under a second) so that the displayed
    # bounds are the computed ones; the checks below verify the certificate against them.
    cert = certify_gelu_tanh_error()
    low_disp, up_disp = _outward(cert.lower, "floor"), _outward(cert.upper, "ceiling")
    results: dict = dict(cert.to_dict())
    results["certified_interval"] = [float(low_disp), float(up_disp)]
    results["statement"] = (f"max_x |err(x)| in [{low_disp:.6e}, {up_disp:.6e}], attained at "
                            f"x = +-{cert.argmax:.6f} with err = {cert.err_at_argmax:.6e}")

    def certificate() -> GeluCertificate:
        c = certify_gelu_tanh_error()
        if not (float(low_disp) <= c.lower and c.upper <= float(up_disp)):
            raise AssertionError("displayed bounds do not enclose the certificate")
        return c

    def branch_and_bound() -> tuple[bool, str]:
        c = certificate()
        ok = c.upper >= c.lower and c.upper - c.lower <= float(TOLERANCE) * 1.01 + 1e-15 and c.tail_bound < c.lower
        return ok, (f"|err| <= {c.upper:.9e} on [0, {TAIL_START}] ({c.intervals} intervals, tolerance {float(TOLERANCE):g}); "
                    f"tail <= {c.tail_bound:.2e}")

    def lower_bound() -> tuple[bool, str]:
        c = certificate()
        return c.lower > 0, (f"|err(x*)| >= {c.lower:.9e} at x* = {c.argmax:.9f} (err(x*) = {c.err_at_argmax:.9e}); "
                             f"other local maximum |err({c.secondary_max[0]:.4f})| = {c.secondary_max[1]:.4e}")

    def cross_check() -> tuple[bool, str]:
        import numpy as np
        from numerics import gelu

        c = certificate()
        xs = np.array([-c.argmax, c.argmax])
        diff = np.asarray(gelu(xs)) - np.asarray(gelu(xs, approximate="tanh"))
        gap = float(np.max(np.abs(diff - c.err_at_argmax)))
        grid = np.linspace(-10, 10, 200001)
        grid_max = float(np.max(np.abs(np.asarray(gelu(grid)) - np.asarray(gelu(grid, approximate="tanh")))))
        ok = gap < 1e-12 and grid_max <= c.upper + 1e-12
        return ok, (f"numerics.gelu exact - tanh at +-x* = {diff.tolist()} (|diff - err(x*)| = {gap:.1e}); "
                    f"max over a 2e5-point grid on [-10, 10] = {grid_max:.9e} <= certified upper bound")

    def conclusion() -> tuple[bool, str]:
        """The interval of the statement from the certificate's bounds, then the numeric cross-check."""
        c = certificate()
        combined = c.tail_bound < c.lower <= c.upper and float(low_disp) <= c.lower and c.upper <= float(up_disp)
        ok, note = cross_check()
        return bool(combined and ok), (f"tail <= {c.tail_bound:.2e} < |err(x*)| >= {c.lower:.9e}, |err| <= {c.upper:.9e} "
                                       f"on [0, {TAIL_START}]: max in [{float(low_disp):.9e}, {float(up_disp):.9e}] "
                                       f"({combined}); {note}")

    steps = [
        Step.define(sp.Function("err")(x_), ERR_EXPR,
                    r"exact GELU $x\Phi(x)$ minus the tanh formula, $u(x) = \sqrt{2/\pi}\,(x + 0.044715\,x^3)$",
                    latex=r"\operatorname{err}(x) &= x\,\Phi(x) - \frac{x}{2}\bigl(1 + \tanh u(x)\bigr)"),
        Step(None, ERR_FORM, r"$\Phi(x) = \tfrac12 (1 + \operatorname{erf}(x/\sqrt2))$",
             latex=r"&= \frac{x}{2}\bigl(\operatorname{erf}(x/\sqrt{2}) - \tanh u(x)\bigr)"),
        Step(r"\operatorname{err}(-x)", r"\operatorname{err}(x)", r"erf and tanh are odd, $u$ is odd: err is even",
             Symbolic(ERR_FORM.subs(x_, -x_) - ERR_FORM)),
        Step(r"\operatorname{err}'(x)", DERIV_FORM, r"differentiate; $u'(x) = \sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\,x^2)$",
             Symbolic(sp.diff(ERR_FORM, x_) - DERIV_FORM),
             latex=(r"\operatorname{err}'(x) &= \tfrac12\bigl(\operatorname{erf}(x/\sqrt2) - \tanh u\bigr) \\ "
                    r"&\qquad + \tfrac{x}{2}\Bigl(\sqrt{2/\pi}\, e^{-x^2/2} - (1 - \tanh^2 u)\, u'(x)\Bigr)")),
        Step(sp.Derivative(sp.exp(-t**2) / (t * sp.sqrt(sp.pi)) - sp.erfc(t), t), -sp.exp(-t**2) / (sp.sqrt(sp.pi) * t**2),
             r"the difference decreases to its limit 0, so $\operatorname{erfc}(t) < e^{-t^2}/(t\sqrt\pi)$ for $t > 0$"),
        Step(sp.Limit(sp.exp(-t**2) / (t * sp.sqrt(sp.pi)) - sp.erfc(t), t, sp.oo), sp.Integer(0),
             r"limit of the difference"),
        Step(1 - sp.tanh(u), 2 / (sp.exp(2 * u) + 1), r"so $0 < 1 - \tanh u < 2 e^{-2u}$",
             Symbolic(prepare=lambda e: sp.expand(e.rewrite(sp.exp)))),
        Step(r"|\operatorname{err}(x)|", r"g(x) = \frac{e^{-x^2/2}}{\sqrt{2\pi}} + x e^{-2u(x)} \quad (x > 0)", rel=r"\le",
             reason=r"$0 < \operatorname{erf}, \tanh u < 1$: $|\operatorname{erf} - \tanh u| \le \operatorname{erfc}(x/\sqrt2) "
                    r"+ (1 - \tanh u)$, then the two bounds above",
             check=Custom(_tail_inequality, "symbolic (witnesses, signs and the algebra)")),
        Step(r"g'(x)", r"-\frac{x e^{-x^2/2}}{\sqrt{2\pi}} + e^{-2u}(1 - 2x u'(x)) < 0 \quad (x \ge 1)",
             r"$g$ is decreasing beyond 1", Custom(_tail_decreasing, "interval arithmetic (mpmath.iv) and symbolic signs")),
        Step(r"\sup_{|x| \ge 6} |\operatorname{err}(x)|", r"g(6) < 10^{-8}", rel=r"\le", reason=r"tail",
             check=Custom(_tail_value, "interval arithmetic (mpmath.iv)")),
        Step(r"\max_{0 \le x \le 6} |\operatorname{err}(x)|", _tex(up_disp), rel=r"\le",
             reason=r"branch and bound, mean-value form $\operatorname{err}(m) + \operatorname{err}'(X)(X - m)$",
             check=Custom(branch_and_bound, "interval arithmetic (mpmath.iv, mean-value form)")),
        Step(r"|\operatorname{err}(\pm x^*)|", _tex(low_disp), rel=r"\ge",
             reason=f"enclosure at the maximiser $x^* = {cert.argmax:.6f}$ (the tanh formula is the larger there)",
             check=Custom(lower_bound, "interval arithmetic (mpmath.iv, point enclosure)")),
        Step(r"\max_{x \in \mathbb{R}} |\operatorname{err}(x)|", f"[{_tex(low_disp)},\\ {_tex(up_disp)}]", rel=r"\in",
             reason=r"the three interval bounds above: the tail below $g(6)$, the branch and bound on $[0, 6]$ "
                    r"(err is even), the enclosure at $x^*$; cross-checked with numerics.gelu on a grid",
             check=Custom(conclusion, "interval arithmetic (mpmath.iv, the bounds above); numeric cross-check "
                                      "(numerics.gelu)")),
    ]
    return Derivation(
        name="gelu-tanh-error",
        title="Certified error of the tanh approximation of GELU",
        statement=(r"$\max_{x \in \mathbb{R}} \left| x\Phi(x) - \tfrac{x}{2}\left(1 + \tanh\left(\sqrt{2/\pi}\,"
                   r"(x + 0.044715 x^3)\right)\right)\right| \in "
                   f"[{_tex(low_disp)}, {_tex(up_disp)}]$, attained at $x = \\pm {cert.argmax:.4f}$, where the tanh "
                   "formula exceeds the exact GELU."),
        steps=steps,
        assumptions=["mpmath point values of erf at 113 bits are accurate to 2^-90 (used through monotonicity); "
                     "all other arithmetic is mpmath.iv interval arithmetic",
                     "erfc(t) < exp(-t^2)/(t sqrt(pi)) for t > 0 is derived in the steps (derivative and limit)"],
        results=results,
        method=Method.NUMERIC,
    )
