"""Parse the LaTeX of a math segment into statements: chains of sides joined by ``=``.

Numbers are read only by :func:`number` (decimals, integers, a sign); never by ``sympify``
(documents are untrusted input: see PITFALLS). A side is an expression tree of tuples:

* ``("num", Rational, text)``: a number as printed (``text`` keeps its decimals);
* ``("mat", rows)``: a matrix as printed, ``rows`` a tuple of tuples of ``("num", ...)``;
* ``("name", key)``: a named value, ``key`` canonical (``W_1^Q``, ``alpha_21``, ``score(x_1,x_2)``);
* ``("op", sym, a, b)`` with ``sym`` in ``+ - * / @ dot``; ``("neg", a)``; ``("pow", a, n)``;
  ``("T", a)``; ``("call", fn, [args])`` for ``exp sqrt softmax concat``; ``("O", a)`` for
  big-O around a count.

Anything else raises :class:`ParseError`, whose message says what was not understood: the
statement is then UNCHECKED with that reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

import sympy as sp


class ParseError(ValueError):
    """A side that the audit cannot read; the message is the reason shown to the user."""


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$")
# 1.2 \times 10^{-3} as printed: one number, 1.2e-3, whose precision is the mantissa's
_SCIENTIFIC = re.compile(r"(\d+(?:\.\d+)?)\s*(?:\*|\\times|\\cdot)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?")


def number(text: str) -> sp.Rational:
    """The exact rational a decimal string denotes (``"0.47"`` -> 47/100); ParseError otherwise."""
    t = text.strip().replace("{,}", ".")
    if not _NUMBER.match(t):
        raise ParseError(f"not a number: {text!r}")
    f = Fraction(t)
    return sp.Rational(f.numerator, f.denominator)


def decimals(text: str) -> int:
    """How many decimals a printed number shows (``"1.40"`` -> 2, ``"3"`` -> 0, ``"1.2e-3"`` -> 4)."""
    t = text.strip()
    mantissa, _, exponent = t.partition("e")
    shown = len(mantissa.split(".", 1)[1]) if "." in mantissa else 0
    return shown - int(exponent or 0)


# --- normalising the LaTeX ------------------------------------------------------------------

_DELIMITER = re.compile(r"\\(left|right)\s*(\\[{}|]|[\[\]().|])")
_DROP = re.compile(r"\\(left|right|displaystyle|Big|big|Bigg|bigg)(?![A-Za-z])|(?<!\\)\\[,;:! ]|\\q?quad(?![A-Za-z])|&=")
_WRAPPERS = re.compile(r"\\(mathrm|mathbf|mathit|boldsymbol|operatorname|text|textbf|textit|mathbb)\s*\{([^{}]*)\}")
_MATRIX = re.compile(r"\\begin\{(bmatrix|pmatrix|matrix|Bmatrix|array)\}(?:\{[lcr|]*\})?(.*?)\\end\{\1\}", re.S)
_INLINE_VECTOR = re.compile(r"\[\s*-?\d[\d.]*(\s*,\s*-?\d[\d.]*)+\s*\]")

FUNCTIONS = {"exp": "exp", "sqrt": "sqrt", "softmax": "softmax", "concat": "concat", "Concat": "concat",
             "Softmax": "softmax", "O": "O"}
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "tau", "phi", "psi",
         "omega", "eta", "rho", "pi", "xi", "zeta", "kappa", "nu", "chi", "Sigma", "Phi", "Omega", "Delta"}
INDEX_LETTERS = set("ijklmnt")
# an identifier written as a word (score, Head, ConcatHeads); other letter runs are products
_WORDLIKE = re.compile(r"^[A-Z]?[a-z]{2,}([A-Z][a-z]+)*$")


def _delimiter(m: re.Match) -> str:
    """``\\left[`` and ``\\left(`` group as parentheses do; ``\\left.`` is nothing."""
    d = m.group(2)
    return "(" if d in ("(", "[", "\\{") else ")" if d in (")", "]", "\\}") else " "


def normalise(latex: str) -> str:
    text = _DROP.sub(" ", _DELIMITER.sub(_delimiter, latex))
    text = _SCIENTIFIC.sub(lambda m: f"{m.group(1)}e{int(m.group(2))}", text)
    for _ in range(3):
        text = _WRAPPERS.sub(lambda m: m.group(2), text)
    text = text.replace("\\times", "*").replace("\\ast", "*").replace("\\cdot", " \\cdot ")
    text = text.replace("\\top", "T").replace("\\intercal", "T").replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    text = text.replace("\\approx", "=").replace("\\equiv", "=")
    return text


def split_statements(latex: str) -> list[str]:
    """One segment may hold several statements: ``a = 1; b = 2`` or ``a = 1, \\quad b = 2``."""
    text = latex.replace("\\approx", "=").replace("\\equiv", "=")
    text = _DROP.sub(lambda m: " ;; " if "quad" in m.group(0) else " ", _DELIMITER.sub(_delimiter, text))
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "{(" or 0
        depth -= ch in "})" or 0
        if ch == ";" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip(" ,") for p in parts if p.strip(" ,")]


def split_sides(statement: str) -> list[str]:
    """The sides of an ``=`` chain at brace depth 0 (``\\leq``, ``\\neq`` are not ``=``)."""
    sides, depth, cur = [], 0, ""
    i = 0
    while i < len(statement):
        ch = statement[i]
        if ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        if ch == "=" and depth == 0:
            sides.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    sides.append(cur)
    return [s.strip() for s in sides]


# --- tokens -----------------------------------------------------------------------------------

@dataclass
class Token:
    kind: str  # num mat word cmd sym
    text: str
    value: object = None


def matrix_rows(body: str) -> tuple[tuple[tuple, ...], ...]:
    """Rows of a matrix body (``a & b \\\\ c & d``) as ``("num", Rational, text)``; ParseError
    (with the entry and the row lengths) on anything that is not a number or on ragged rows."""
    raw_rows = [r for r in re.split(r"\\\\", body) if r.strip()]
    rows = []
    for r in raw_rows:
        entries = [e.strip() for e in r.split("&")]
        row = []
        for e in entries:
            e2 = e.replace(" ", "")
            if not _NUMBER.match(e2):
                raise ParseError(f"matrix entry {e!r} is not a number")
            row.append(("num", number(e2), e2.lstrip("+")))
        rows.append(tuple(row))
    if not rows:
        raise ParseError("empty matrix")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ParseError(f"malformed matrix: rows of different lengths {[len(r) for r in rows]}")
    return tuple(rows)


_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.\d+|\d+|\.\d+)(?:e[+-]?\d+(?![\d.]))?)|(?P<cmd>\\[A-Za-z]+)|(?P<word>[A-Za-z]+)|(?P<sym>[_^{}()+\-*/,'|\[\]=<>!]))")


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        ws = re.match(r"\s*", text[pos:]).end()
        m = _MATRIX.match(text, pos + ws)
        if m:
            out.append(Token("mat", m.group(0), matrix_rows(m.group(2))))
            pos = m.end()
            continue
        m = _INLINE_VECTOR.match(text, pos + ws)
        if m:
            row = tuple(("num", number(e), e.strip()) for e in m.group(0)[1:-1].split(","))
            out.append(Token("mat", m.group(0), (row,)))
            pos = m.end()
            continue
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise ParseError(f"cannot read {text[pos + ws:pos + ws + 12]!r}")
        kind = m.lastgroup
        out.append(Token(kind, m.group(kind)))
        pos = m.end()
    return out


# --- the parser -------------------------------------------------------------------------------

@dataclass
class Parser:
    tokens: list[Token]
    known: set = field(default_factory=set)
    i: int = 0

    def peek(self, k: int = 0) -> Token | None:
        return self.tokens[self.i + k] if self.i + k < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise ParseError("the expression ends too early")
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise ParseError(f"expected {text!r}, found {tok.text!r}")

    def parse(self):
        node = self.sum()
        if self.peek() is not None:
            raise ParseError(f"cannot read from {self.peek().text!r} on")
        return node

    def sum(self):
        node = self.term()
        while self.peek() is not None and self.peek().text in "+-" and self.peek().kind == "sym":
            op = self.take().text
            node = ("op", op, node, self.term())
        return node

    def _starts_atom(self, tok: Token | None) -> bool:
        if tok is None:
            return False
        if tok.kind in ("num", "mat", "word"):
            return True
        if tok.kind == "cmd":
            return tok.text[1:] in ("frac", "sqrt", "exp") or tok.text[1:] in GREEK
        return tok.text in ("(", "{")

    def term(self):
        node = self.factor()
        while True:
            tok = self.peek()
            if tok is not None and (tok.text in ("*", "/") or tok.text == "\\cdot"):
                self.take()
                op = {"*": "*", "/": "/", "\\cdot": "dot"}[tok.text]
                node = ("op", op, node, self.factor())
            elif self._starts_atom(tok):
                node = ("op", "@", node, self.factor())
            else:
                return node

    def factor(self):
        tok = self.peek()
        if tok is not None and tok.text == "-":
            self.take()
            return ("neg", self.factor())
        if tok is not None and tok.text == "+":
            self.take()
            return self.factor()
        return self.postfix(self.atom())

    def group(self):
        """A ``{...}`` argument, or one token."""
        if self.peek() is not None and self.peek().text == "{":
            self.take()
            node = self.sum()
            self.expect("}")
            return node
        return self.atom()

    def postfix(self, node):
        while self.peek() is not None and self.peek().text == "^":
            self.take()
            if self.peek() is not None and self.peek().text == "{":
                start = self.i
                self.take()
                if self.peek() is not None and self.peek().text == "T" and self.peek(1) is not None \
                        and self.peek(1).text == "}":
                    self.i += 2
                    node = ("T", node)
                    continue
                self.i = start
                node = ("pow", node, self.group())
            elif self.peek() is not None and self.peek().text == "T":
                self.take()
                node = ("T", node)
            else:
                tok = self.take()
                if tok.kind != "num":
                    raise ParseError(f"cannot read the exponent {tok.text!r}")
                if len(tok.text) > 1 and "." not in tok.text:  # x^23 in LaTeX is x^2 3
                    node = ("op", "@", ("pow", node, ("num", number(tok.text[0]), tok.text[0])),
                            ("num", number(tok.text[1:]), tok.text[1:]))
                else:
                    node = ("pow", node, ("num", number(tok.text), tok.text))
        return node

    def scripts(self) -> tuple[str, str]:
        """``_x``/``_{...}`` and ``^x``/``^{...}`` right after a name (a superscript that is a
        number or T is left for :meth:`postfix`)."""
        sub = sup = ""
        while self.peek() is not None and self.peek().text in ("_", "^"):
            mark = self.peek().text
            nxt = self.peek(1)
            if nxt is None:
                raise ParseError(f"{mark} with nothing after it")
            if mark == "^":
                if nxt.text == "T" or nxt.kind == "num":
                    break
                if nxt.text == "{" and self.peek(2) is not None and (
                        self.peek(2).kind == "num" or self.peek(2).text == "T") \
                        and self.peek(3) is not None and self.peek(3).text == "}":
                    break
            self.take()
            text = self.raw_group()
            if mark == "_":
                sub += text
            else:
                sup += text
        return sub, sup

    def raw_group(self) -> str:
        """A script's text: one token, or everything inside ``{...}``."""
        tok = self.take()
        if tok.text != "{":
            return tok.text.lstrip("\\")
        return self.raw_until("{", "}")

    def raw_until(self, opening: str, closing: str, skip: tuple[str, ...] = ()) -> str:
        """The tokens' text up to the ``closing`` that balances an ``opening`` already taken."""
        depth, parts = 1, []
        while True:
            tok = self.take()
            depth += (tok.text == opening) - (tok.text == closing)
            if depth == 0:
                return "".join(parts)
            if tok.text not in skip:
                parts.append(tok.text.lstrip("\\"))

    def call_args(self) -> list:
        self.expect("(")
        args = [self.sum()]
        while self.peek() is not None and self.peek().text == ",":
            self.take()
            args.append(self.sum())
        self.expect(")")
        return args

    def raw_parens(self) -> str:
        """``(x_1, x_2)`` after a label such as ``score``, as canonical text."""
        self.expect("(")
        return "(" + self.raw_until("(", ")", skip=("{", "}")) + ")"

    def atom(self):
        tok = self.take()
        if tok.kind == "num":
            return ("num", number(tok.text), tok.text)
        if tok.kind == "mat":
            return ("mat", tok.value)
        if tok.text in ("(", "{"):
            node = self.sum()
            self.expect(")" if tok.text == "(" else "}")
            return node
        if tok.kind == "cmd":
            name = tok.text[1:]
            if name == "frac":
                return ("op", "/", self.group(), self.group())
            if name == "sqrt":
                return ("call", "sqrt", [self.group()])
            if name == "exp":
                if self.peek() is not None and self.peek().text == "(":
                    return ("call", "exp", self.call_args())
                return ("call", "exp", [self.group()])
            if name in GREEK:
                return self.named(name)
            if name in ("sum", "prod", "int", "max", "min", "lim", "mathbb", "Var", "mathbb"):
                raise ParseError(f"a formula over symbols (\\{name}), not a worked number: no values to compute")
            raise ParseError(f"cannot evaluate \\{name}")
        if tok.kind == "word":
            return self.word(tok.text)
        raise ParseError(f"unexpected {tok.text!r}")

    def word(self, word: str):
        if word == "e" and self.peek() is not None and self.peek().text == "^":
            self.take()
            return ("call", "exp", [self.group()])
        if word in FUNCTIONS and self.peek() is not None and self.peek().text == "(":
            return ("call", FUNCTIONS[word], self.call_args())
        if word in self.known or len(word) == 1:
            return self.named(word)
        if not _WORDLIKE.match(word):
            # juxtaposed one-letter names: XW_1^Q is X times W_1^Q; nd^2 is n times d^2
            self.i -= 1
            self.tokens[self.i:self.i + 1] = [Token("word", c) for c in word]
            return self.named(self.take().text)
        return self.named(word)

    def named(self, base: str):
        sub, sup = self.scripts()
        key = name_key(base, sub, sup)
        if self.peek() is not None and self.peek().text == "(" and len(base) > 1:
            key += self.raw_parens().replace(" ", "")
        return ("name", key)


def name_key(base: str, sub: str = "", sup: str = "") -> str:
    """Canonical name: ``W_1^Q`` whether written ``W^Q_1``, ``W_{1}^{Q}`` or ``W_1^{Q}``."""
    sub = sub.replace(" ", "").replace(",", "")
    sup = sup.replace(" ", "")
    return base + (f"_{sub}" if sub else "") + (f"^{sup}" if sup else "")


def parse_side(text: str, known: set | None = None):
    """One side of a statement as an expression tree; ParseError says what could not be read."""
    tokens = tokenize(normalise(text))
    if not tokens:
        raise ParseError("empty side")
    return Parser(tokens, set(known or ())).parse()


def is_literal(node) -> bool:
    """A printed value: a number (maybe signed) or a matrix of numbers, nothing computed."""
    if node[0] == "neg":
        return node[1][0] == "num"
    if node[0] == "call" and node[1] == "O":
        return is_literal(node[2][0])
    return node[0] in ("num", "mat")


def names_in(node) -> list[str]:
    """Every name an expression uses, in order."""
    if node[0] == "name":
        return [node[1]]
    out = []
    for part in node[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            out += names_in(part)
        elif isinstance(part, list):
            for p in part:
                out += names_in(p)
    return out


def literal_text(node) -> str:
    """How a literal side reads, for tables: ``0.47`` or ``[0.7, 0.9; 0.9, 0.7]``."""
    if node[0] == "neg":
        return "-" + node[1][2]
    if node[0] == "call" and node[1] == "O":
        return literal_text(node[2][0])
    if node[0] == "num":
        return node[2]
    return "[" + "; ".join(", ".join(e[2] for e in row) for row in node[1]) + "]"
