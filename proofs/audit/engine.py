"""Walk a document's statements in order, keep what it printed and what is correct, and judge
each numeric statement.

Two environments run side by side: ``printed`` (each name bound to the value the document
printed) and ``correct`` (each name bound to its recomputed value). A statement
``label = expression = ... = literal`` is recomputed in both; :mod:`proofs.audit.judge`
turns the pair into HOLDS / WRONG (new or carried) / UNCHECKED.

General forms the document states with an index (``q_i = x_i W^Q``, ``score(x_i, x_j) =
q_i \\cdot k_j / \\sqrt{d_k}``) are collected first, from the whole document: they define
values the example prints without a formula (``q_2 = [...]``) and show when an example skips
a scale it states elsewhere. A literal inside an expression that repeats a value printed
earlier (``e^{1.22}`` after ``score(x_2, x_1) = 1.22``) is that value: the correct
recomputation uses the correct value in its place, so an error carried through a restated
number is still traced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp

from . import judge as J
from .evaluate import Evaluator, Unresolved, entries, is_vector, shape
from .parse import _SCIENTIFIC, INDEX_LETTERS, ParseError, is_literal, literal_text, names_in, parse_side, split_sides, \
    split_statements
from .source import Document, Segment

_NUMERIC_LOOKING = re.compile(r"^[\s\d.,\-+&\\\[\]{}()]*$")


def _looks_numeric(side: str) -> bool:
    side = _SCIENTIFIC.sub("1", side)
    stripped = re.sub(r"\\begin\{array\}\{[lcr|]*\}|\\(begin|end)\{[a-zA-Z]*\}|\\\\|O\(|\\left|\\right", " ", side)
    return bool(re.search(r"\d", stripped)) and bool(_NUMERIC_LOOKING.match(stripped))


@dataclass
class Template:
    """A general form ``q_i = x_i W^Q``: ``pattern`` matches concrete names, ``rhs`` the side."""

    lhs: str
    pattern: re.Pattern
    letters: list[str]
    rhs: str
    line: int


def _template(lhs_key: str, rhs: str, line: int) -> Template | None:
    m = re.match(r"^([A-Za-z]+)_([a-z]+)(\^[A-Za-z]+)?$", lhs_key)
    compound = re.match(r"^([A-Za-z]+)\(([^()]*)\)$", lhs_key)
    if m and set(m.group(2)) <= INDEX_LETTERS:
        letters = list(m.group(2))
        digit = r"(\d+)" if len(letters) == 1 else r"(\d)"
        pattern = re.escape(m.group(1)) + "_" + digit * len(letters) + re.escape(m.group(3) or "")
        return Template(lhs_key, re.compile("^" + pattern + "$"), letters, rhs, line)
    if compound:
        args = compound.group(2).split(",")
        letters, parts = [], []
        for a in args:
            am = re.match(r"^([A-Za-z]+)_([a-z])$", a)
            if not am or am.group(2) not in INDEX_LETTERS:
                return None
            letters.append(am.group(2))
            parts.append(re.escape(am.group(1)) + r"_(\d+)")
        return Template(lhs_key, re.compile("^" + re.escape(compound.group(1)) + r"\(" + ",".join(parts) + r"\)$"),
                        letters, rhs, line)
    return None


def _instantiate(text: str, binding: dict[str, str]) -> str:
    """Replace index letters in subscripts: ``x_iW^Q`` with i=2 -> ``x_{2}W^Q``."""
    def sub(m):
        body = m.group(1) or m.group(2)
        return "_{" + "".join(binding.get(c, c) for c in body) + "}"
    return re.sub(r"_\{([a-z]+)\}|_([a-z])(?![a-z])", sub, text)


@dataclass
class Audit:
    """The audit of one document: ``findings`` (numeric statements) and ``inputs`` (the values
    it gives: name, line, printed text)."""

    document: str
    findings: list[J.Finding] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {o: sum(f.outcome == o for f in self.findings) for o in J.OUTCOMES}


class Engine:
    def __init__(self, doc: Document):
        self.doc = doc
        self.printed: dict[str, object] = {}
        self.correct: dict[str, object] = {}
        self.status: dict[str, str] = {}
        self.where: dict[str, int] = {}
        self.texts: list[tuple[object, str]] = []  # (printed key, name), most recent last
        self.templates: list[Template] = []
        self.audit = Audit(doc.name)

    # ---- first pass: general forms --------------------------------------------------------
    def collect_templates(self, segments: list[Segment]) -> None:
        for seg in segments:
            for stmt in split_statements(seg.text):
                sides = split_sides(stmt)
                if len(sides) != 2 or _looks_numeric(sides[1]):
                    continue
                try:
                    lhs = parse_side(sides[0])
                except ParseError:
                    continue
                if lhs[0] == "name":
                    t = _template(lhs[1], sides[1].split(r"\forall")[0].rstrip(" ,"), seg.line)
                    if t:
                        self.templates.append(t)

    def template_for(self, key: str):
        for t in self.templates:
            m = t.pattern.match(key)
            if m:
                return t, dict(zip(t.letters, m.groups()))
        return None

    def derive_from_template(self, key: str, depth: int = 0):
        """The correct value of ``key`` from a general form, or None."""
        found = self.template_for(key)
        if not found or depth > 3:
            return None
        t, binding = found
        try:
            node = parse_side(_instantiate(t.rhs, binding), self.known())
        except ParseError:
            return None
        for name in names_in(node):
            if name not in self.correct and self.derive_from_template(name, depth + 1) is None:
                return None
        try:
            value = Evaluator(self.correct)(node)
        except (Unresolved, ParseError, TypeError, ValueError):
            return None
        self.correct[key] = value
        self.status.setdefault(key, "DERIVED")
        return value

    def known(self) -> set:
        return set(self.printed) | set(self.correct)

    # ---- binding and linking ----------------------------------------------------------------
    @staticmethod
    def _text_key(node):
        if node[0] == "num":
            return ("s", node[2])
        rows = node[1]
        flat = tuple(e[2] for row in rows for e in row)
        if len(rows) == 1 or len(rows[0]) == 1:
            return ("v", flat)
        return ("m", len(rows), flat)

    def bind(self, key: str, literal_node, correct_value, status: str, line: int) -> None:
        value = Evaluator({})(literal_node)
        self.printed[key] = value
        self.correct[key] = value if correct_value is None else correct_value
        self.status[key] = status
        self.where[key] = line
        if literal_node[0] in ("num", "mat"):
            self.texts.append((self._text_key(literal_node), key))

    def linker(self, aligned: dict[int, str]):
        """The correct-value substitute for a printed literal (aligned name, else same text)."""
        def link(node):
            name = aligned.get(id(node))
            if name is None and node[0] in ("num", "mat"):
                key = self._text_key(node)
                for k, n in reversed(self.texts):
                    if k == key and (node[0] == "mat" or self.status.get(n) in (J.HOLDS, J.WRONG)):
                        name = n
                        break
            if name is None or name not in self.correct:
                return None
            value = self.correct[name]
            if node[0] == "mat" and isinstance(value, sp.MatrixBase):
                rows, cols = len(node[1]), len(node[1][0])
                if value.shape != (rows, cols) and is_vector(value) and len(value) == rows * cols:
                    value = value.reshape(rows, cols)
            link.used.append(name)
            shown = literal_text(node) if node[0] == "num" else "a printed matrix"
            reading = f"read {shown} as {name} (line {self.where.get(name)})"
            if reading not in link.readings:
                link.readings.append(reading)
            return value
        link.used, link.readings = [], []
        return link

    def align(self, named, lit, out: dict[int, str], implicit: list) -> None:
        """Walk a side with names beside a side with printed literals in the same places."""
        if named[0] == "name" and lit[0] in ("num", "mat"):
            out[id(lit)] = named[1]
            if named[1] not in self.printed:
                implicit.append((named[1], lit))
            return
        if named[0] != lit[0] or len(named) != len(lit):
            return
        if named[0] == "op" and named[1] != lit[1]:
            return
        for a, b in zip(named[1:], lit[1:]):
            if isinstance(a, tuple) and isinstance(b, tuple) and a and isinstance(a[0], str):
                self.align(a, b, out, implicit)

    # ---- the walk -----------------------------------------------------------------------------
    def run(self) -> Audit:
        segments = self.doc.segments()
        self.collect_templates(segments)
        for seg in segments:
            for stmt in split_statements(seg.text):
                if "=" not in stmt:
                    continue
                try:
                    self.statement(seg, stmt)
                except (RecursionError, ArithmeticError, ParseError) as exc:
                    self.unchecked(seg, " ".join(split_sides(stmt)[0].split())[:60], stmt[:90],
                                   f"could not be evaluated: {type(exc).__name__} {exc}".strip())
        return self.audit

    def statement(self, seg: Segment, stmt: str) -> None:
        sides = split_sides(stmt)
        if len(sides) < 2:
            return
        last = sides[-1].split(r"\forall")[0].strip().rstrip(",").strip()
        if not _looks_numeric(last) and not re.search(r"\\begin\{([bpB]?matrix|array)\}", last):
            return  # a formula, not a worked number
        short = stmt if len(stmt) <= 90 else stmt[:87] + "..."
        try:
            claimed = parse_side(last)
            if not is_literal(claimed):
                raise ParseError("the printed result is not a number or a matrix of numbers")
        except ParseError as exc:
            self.unchecked(seg, sides[0].strip(), short, f"{exc}")
            return
        if claimed[0] == "call":  # O(2672640)
            claimed = claimed[2][0]
        parsed, errors = [], []
        for s in sides[:-1]:
            try:
                parsed.append(parse_side(s, self.known()))
            except ParseError as exc:
                parsed.append(None)
                errors.append(f"cannot read {s.strip()!r}: {exc}")
        label_node = parsed[0] if parsed[0] is not None and parsed[0][0] == "name" else None
        label = label_node[1] if label_node else sides[0].strip()
        # names only (d_k = d_v = 2): inputs, unless a general form or an earlier value defines one
        derivations = [p for p in parsed if p is not None and p[0] != "name"]
        name_sides = [p[1] for p in parsed if p is not None and p[0] == "name"]
        if not derivations and not errors:
            for key in name_sides:
                self.named_literal(seg, key, claimed, short)
            return
        if not derivations:
            self.unchecked(seg, label, short, "; ".join(errors))
            if label_node:
                self.bind(label, claimed, None, J.UNCHECKED, seg.line)
            return
        # implicit values: names printed only inside another side (v_2 in a_2 = ... = 0.53 * [...])
        aligned: dict[int, str] = {}
        implicit: list = []
        for a in derivations:
            for b in derivations:
                if a is not b:
                    self.align(a, b, aligned, implicit)
        for key, lit in implicit:
            if key not in self.printed and key not in self.correct:
                self.derive_from_template(key)
            if key in self.correct and key not in self.printed:
                self.judge(seg, key, f"{key} (printed inside: {short})", ("name", key), lit, {}, implicit=True)
            elif key not in self.printed:
                self.bind(key, lit, None, "GIVEN", seg.line)
        self.intermediate_terms(seg, derivations, short)
        self.judge(seg, label if label_node else None, short, derivations, claimed, aligned, errors=errors,
                   label_text=label, display=" ".join(sides[0].split()))

    @staticmethod
    def _terms(node) -> list:
        """The terms of a sum, in order: ``a + b - c`` -> [a, b, -c]."""
        if node[0] == "call" and node[1] == "O":
            return Engine._terms(node[2][0])
        if node[0] == "op" and node[1] in "+-":
            right = node[3] if node[1] == "+" else ("neg", node[3])
            return Engine._terms(node[2]) + [right]
        return [node]

    def intermediate_terms(self, seg: Segment, derivations: list, short: str) -> None:
        """``O(10^2 * 512 + 10 * 512^2) = O(51200 + 2621440)``: each printed term is a statement of
        its own (a sum can be right with two wrong terms), judged against the term it stands for."""
        for k, printed in enumerate(derivations):
            terms = self._terms(printed)
            if len(terms) < 2 or not all(is_literal(t) for t in terms):
                continue
            for source in derivations[:k]:
                formula = self._terms(source)
                if len(formula) != len(terms) or all(is_literal(t) for t in formula):
                    continue
                try:
                    [Evaluator(self.correct)(t) for t in formula]
                except (Unresolved, ParseError, TypeError, ValueError):
                    continue
                for i, (f, t) in enumerate(zip(formula, terms)):
                    self.judge(seg, None, short, [f], t, {}, display=f"{literal_text(t)}, term {i + 1} of the sum",
                               implicit=True)
                return

    def named_literal(self, seg: Segment, key: str, claimed, short: str) -> None:
        """``name = literal``: an input, a restatement, or a value a general form defines."""
        if key in self.printed and self.status.get(key) != "GIVEN":
            self.judge(seg, key, short, [("name", key)], claimed, {}, restated=True)
            return
        if self.status.get(key) != "GIVEN" and (key in self.correct or self.derive_from_template(key) is not None):
            self.judge(seg, key, short, [("name", key)], claimed, {}, from_template=True)
            return
        entry = {"name": key, "line": seg.line, "printed": literal_text(claimed)}
        if key in self.printed and self.printed[key] != Evaluator({})(claimed):
            entry["note"] = f"a new value: line {self.where[key]} gave {key} another (a new example)"
        self.bind(key, claimed, None, "GIVEN", seg.line)
        self.audit.inputs.append(entry)

    def span_of(self, seg: Segment, claimed) -> tuple[int, int] | None:
        """Where the printed literal sits in the document's raw line (for --annotate)."""
        if seg.start is None or not hasattr(claimed, "__len__"):
            return None
        raw = self.doc.lines[seg.line - 1][seg.start:seg.end]
        if claimed[0] == "mat":
            hits = list(re.finditer(r"\\begin\{([bpB]?matrix|array)\}.*?\\end\{\1\}", raw, re.S))
            want = tuple(e[2] for row in claimed[1] for e in row)
            for m in reversed(hits):
                body = re.sub(r"\\begin\{[a-zA-Z]*\}(\{[lcr|]*\})?|\\end\{[a-zA-Z]*\}", "", m.group(0))
                got = tuple(x.strip().replace(" ", "") for x in re.split(r"\\\\|&", body) if x.strip())
                if got == want:
                    return seg.start + m.start(), seg.start + m.end()
            return None
        text = literal_text(claimed)
        for m in reversed(list(re.finditer(r"(?<![\d.])" + re.escape(text) + r"(?![\d.])", raw))):
            return seg.start + m.start(), seg.start + m.end()
        return None

    def unchecked(self, seg: Segment, label: str, short: str, reason: str, key: str | None = None) -> None:
        self.audit.findings.append(J.Finding(seg.line, label, short, J.UNCHECKED, reason=reason, name=key))

    def judge(self, seg, key, short, derivations, claimed, aligned, *, errors=(), restated=False,
              from_template=False, implicit=False, label_text=None, display=None) -> None:
        if not isinstance(derivations, list):
            derivations = [derivations]
        notes = list(errors)
        correct = from_printed = None
        primary = None
        link = self.linker(aligned)
        evaluator_notes: list[str] = []
        missing = []
        for node in derivations:
            for name in names_in(node):
                if name not in self.correct:
                    self.derive_from_template(name)
            ev = Evaluator(self.correct, link, evaluator_notes)
            try:
                value = ev(node)
            except Unresolved as exc:
                missing.append(str(exc))
                continue
            except (ParseError, TypeError, ValueError) as exc:
                notes.append(f"cannot evaluate: {exc}")
                continue
            if any(v.has(sp.zoo, sp.nan, sp.oo, -sp.oo) for v in entries(value)):
                notes.append("not finite (a division by zero)")
                continue
            if primary is None:
                primary, correct = node, value
                used = names_in(node) + link.used
                try:
                    from_printed = Evaluator(self.printed, lambda n: None, [])(node)
                except (Unresolved, ParseError, TypeError, ValueError):
                    from_printed = None
        label = display or key or label_text or short
        if primary is None:
            reason = ("uses names with no value in the document: " + ", ".join(dict.fromkeys(missing))
                      if missing else "; ".join(notes) or "nothing to evaluate")
            self.unchecked(seg, label, short, reason, key)
            if key:
                self.bind(key, claimed, None, J.UNCHECKED, seg.line)
            return
        notes += evaluator_notes + [r for r in link.readings if "printed matrix" not in r]
        if restated:
            notes.append(f"restates {key} (line {self.where.get(key)})")
        if from_template:
            found = self.template_for(key)
            if found:
                notes.append(f"{key} by the general form at line {found[0].line}")
        scaled = [t for t in self.templates if key and t.pattern.match(key) and "sqrt" in t.rhs]
        if scaled and not from_template and "sqrt" not in short:
            notes.append(f"the document defines {scaled[0].lhs} with a 1/sqrt(d_k) scale (line {scaled[0].line});"
                         " this example leaves it out: checked as the example computes it")
        printed_texts = [e[2] for row in claimed[1] for e in row] if claimed[0] == "mat" else \
            [("-" + claimed[1][2]) if claimed[0] == "neg" else claimed[2]]
        pshape = (len(claimed[1]), len(claimed[1][0])) if claimed[0] == "mat" else (1, 1)
        if shape(correct) != pshape:
            if is_vector(correct) and len(entries(correct)) == len(printed_texts):
                notes.append("printed as a column, computed as a row" if pshape[1] == 1 else
                             "printed as a row, computed as a column")
            else:
                self.audit.findings.append(J.Finding(
                    seg.line, label, short, J.WRONG, printed=literal_text(claimed),
                    correct=f"a {shape(correct)[0]} x {shape(correct)[1]} value", origin="new",
                    reason=f"printed shape {pshape}, computed shape {shape(correct)}", notes=notes, name=key))
                if key:
                    self.bind(key, claimed, correct, J.WRONG, seg.line)
                return
        wrong_inputs = [n for n in dict.fromkeys(used) if self.status.get(n) == J.WRONG]
        rows = J.judge_entries(printed_texts, entries(correct),
                               None if from_printed is None else entries(from_printed), wrong_inputs)
        outcome, origin = J.verdict(rows)
        correct_texts = [r["correct"] for r in rows]
        f = J.Finding(seg.line, label, short, outcome, printed=literal_text(claimed), span=self.span_of(seg, claimed),
                      shape=pshape,
                      correct=J.matrix_text(correct_texts, pshape),
                      max_deviation=max(r["deviation"] for r in rows), origin=origin,
                      wrong_inputs=wrong_inputs if outcome == J.WRONG else [], notes=notes, entries=rows,
                      implicit=implicit, name=key, restated=restated)
        self.audit.findings.append(f)
        if key:
            if key in self.printed and restated:
                return
            self.bind(key, claimed, correct, outcome, seg.line)


def audit_document(doc: Document) -> Audit:
    """Audit one document read by :class:`proofs.audit.source.Document`."""
    return Engine(doc).run()
