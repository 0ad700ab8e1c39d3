"""`attnverify prove FILE`: the shipped examples, the README's example, outputs and bad scripts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import sympy as sp
from click.testing import CliRunner

from proofs.latex import check_latex
from verify.cli import main

EXAMPLES = resources.files("proofs") / "examples"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def schema():
    return json.loads(resources.files("proofs").joinpath("schema/prove.schema.json").read_text())


def prove(*args: str):
    return CliRunner().invoke(main, ["prove", *map(str, args)], env={"COLUMNS": "200"})


def mutated(tmp_path: Path, example: str, old: str, new: str) -> Path:
    """A copy of an example with one piece of text replaced (which must occur exactly once)."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {example}"
    path = tmp_path / example
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the examples


@pytest.mark.parametrize("example", ["softmax_temperature.py", "correlated_qk.py"])
def test_each_correct_example_is_proved(example, tmp_path, schema):
    out = tmp_path / "r.json"
    result = prove(EXAMPLES / example, "--json", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, schema)
    assert doc["proved"] and doc["summary"]["derivations"]["PROVED"] == 1
    steps = doc["derivations"][0]["steps"]
    assert all(s["status"] in ("PASS", "DEFINITION", "CITED") for s in steps)
    assert all(s["tag"].endswith("NOT CHECKED") or "not checked in general" in s["tag"]
               for s in steps if s["status"] == "CITED")
    assert sum(s["status"] == "PASS" for s in steps) >= 5
    assert "PROVED" in result.output


def test_the_wrong_step_example_exits_1_and_names_the_step(tmp_path, schema):
    out = tmp_path / "r.json"
    result = prove(EXAMPLES / "wrong_step.py", "--json", out)
    assert result.exit_code == 1, result.output
    assert "FAIL score-scaling, step 3 (dividing by d_k keeps the variance at 1 too)" in result.output
    quoted = re.search(r"`(FAIL score-scaling[^`]*)`", readme_section()).group(1)
    assert quoted in " ".join(result.output.split()), "the README quotes a line prove does not print"
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, schema)
    steps = doc["derivations"][0]["steps"]
    assert [s["status"] for s in steps] == ["PASS", "PASS", "FAIL"]
    wrong = steps[2]
    assert wrong["residual"] == "(1 - d_k)/d_k"
    d_k = int(wrong["counterexample"]["values"]["d_k"])
    assert d_k > 1 and wrong["counterexample"]["residual"] == f"{1 - d_k}/{d_k}"  # Var(q.k/d_k) - 1 = 1/d_k - 1


def test_softmax_temperature_fails_when_the_factor_1_over_t_is_dropped(tmp_path):
    path = mutated(tmp_path, "softmax_temperature.py", "sigma[i] * (delta - sigma[j]) / T,\n",
                   "sigma[i] * (delta - sigma[j]),\n")
    result = prove(path)
    assert result.exit_code == 1
    assert "FAIL softmax-temperature-jacobian, step 2 (quotient rule and chain rule" in result.output


def test_softmax_temperature_matrix_form_fails_with_the_wrong_temperature(tmp_path):
    path = mutated(tmp_path, "softmax_temperature.py", "(sp.diag(*weights) - weights * weights.T) / T",
                   "(sp.diag(*weights) - weights * weights.T) * T")
    result = prove(path)
    assert result.exit_code == 1
    assert re.search(r"FAIL softmax-temperature-jacobian, step 3 .*at n=2", result.output)


def test_correlated_qk_fails_with_the_uncorrelated_formula_and_the_wrong_fourth_moment(tmp_path):
    path = mutated(tmp_path, "correlated_qk.py", "ByExpectation(E, variance_form(dot), d * (1 + rho**2),",
                   "ByExpectation(E, variance_form(dot), d * (1 + 2 * rho**2),")
    result = prove(path)
    assert result.exit_code == 1
    assert "FAIL correlated-qk-variance, step 6" in result.output
    path = mutated(tmp_path, "correlated_qk.py", "ByExpectation(E_z, z1**2 * k_from_z**2, 1 + 2 * rho**2,",
                   "ByExpectation(E_z, z1**2 * k_from_z**2, 1 + rho**2,")
    assert "FAIL correlated-qk-variance, step 4" in prove(path).output


def test_correlated_qk_monte_carlo_step_refutes_a_wrong_value(tmp_path):
    path = mutated(tmp_path, "correlated_qk.py", "check_equal(result, width * (1 + r * r)",
                   "check_equal(result, width * (1 + 2 * r * r)")
    result = prove(path, "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    step = json.loads((tmp_path / "r.json").read_text())["derivations"][0]["steps"][-1]
    assert step["status"] == "FAIL" and "REFUTED" in step["note"]


# --------------------------------------------------------------------------- the README


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Write your own proof\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_readme_example_runs_exactly_as_printed(tmp_path):
    section = readme_section()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    name = re.match(r"# (\S+\.py)\n", code).group(1)
    (tmp_path / name).write_text(code, encoding="utf-8")
    commands = [line.split("#")[0].strip() for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands and all(c.startswith(f"attnverify prove {name}") for c in commands)
    bin_dir = os.path.dirname(sys.executable)
    exe = shutil.which("attnverify", path=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("the attnverify console script is not installed (pip install -e .)")
    env = {**os.environ, "PATH": os.path.dirname(exe) + os.pathsep + os.environ.get("PATH", ""), "COLUMNS": "200"}
    for command in commands:
        run = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "two-logit-softmax: PROVED" in run.stdout
        assert run.stdout.count("PASS") >= 2
    words = shlex.split(commands[-1])
    tex, doc = (tmp_path / words[words.index(option) + 1] for option in ("--latex", "--json"))
    check_latex(tex.read_text())
    assert json.loads(doc.read_text())["proved"] is True


# --------------------------------------------------------------------------- outputs


def test_json_to_stdout_and_tables_to_stderr(tmp_path):
    result = CliRunner().invoke(main, ["prove", str(EXAMPLES / "wrong_step.py"), "--json", "-"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)  # click >= 8.2 keeps stderr out of stdout
    assert "FAIL score-scaling" in result.stderr
    assert doc["summary"]["steps"]["FAIL"] == 1


def test_latex_output_is_sound_and_marks_the_failed_step(tmp_path):
    tex = tmp_path / "out" / "proof.tex"
    result = prove(EXAMPLES / "wrong_step.py", "--latex", tex, "--no-pdf")
    assert result.exit_code == 1
    body = tex.read_text()
    check_latex(body)
    assert body.count(r"\begin{align*}") == 1 and "FAILED" in body


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (apt-get install texlive-latex-base)")
def test_latex_output_compiles_to_a_pdf(tmp_path):
    tex = tmp_path / "proof.tex"
    result = prove(EXAMPLES / "softmax_temperature.py", "--latex", tex)
    assert result.exit_code == 0, result.output
    assert tex.with_suffix(".pdf").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proof.pdf", "proof.tex"]  # no .aux, .log beside


def test_latex_and_json_may_not_name_the_same_file(tmp_path):
    same = tmp_path / "x.tex"
    result = prove(EXAMPLES / "wrong_step.py", "--latex", same, "--json", same)
    assert result.exit_code == 2 and "name the same file" in result.output


def test_latex_wants_a_tex_file(tmp_path):
    result = prove(EXAMPLES / "wrong_step.py", "--latex", tmp_path / "x.pdf")
    assert result.exit_code == 2 and ".tex" in result.output


# --------------------------------------------------------------------------- bad scripts


def test_a_missing_file_is_a_usage_error(tmp_path):
    result = prove(tmp_path / "nope.py")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_a_syntax_error_exits_1_with_file_and_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from proofs import Step\n\nsteps = [Step(1, 2, 'x'),\n", encoding="utf-8")
    result = prove(path)
    assert result.exit_code == 1
    assert re.search(rf"{re.escape(str(path))}:3(:\d+)?: syntax error", result.output)


def test_a_script_that_defines_nothing_exits_1_and_says_what_to_define(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("import sympy\n", encoding="utf-8")
    result = prove(path)
    assert result.exit_code == 1
    assert "defines nothing to prove" in result.output and "Derivation" in result.output


def test_a_raising_checker_is_reported_against_its_step_and_the_other_steps_run(tmp_path):
    path = tmp_path / "raises.py"
    path.write_text(
        "import sympy as sp\n"
        "from proofs import Custom, Derivation, Step\n"
        "x = sp.Symbol('x')\n"
        "d = Derivation('d', 'd', '-', [Step(x + x, 2 * x, 'double'),\n"
        "    Step('a', 'b', 'divides by zero', Custom(lambda: (1 / 0, ''), 'numeric')),\n"
        "    Step(x * x, x**2, 'square')])\n", encoding="utf-8")
    result = prove(path)
    assert result.exit_code == 1
    assert f"ERROR d, step 2 (divides by zero): the checker raised ZeroDivisionError: division by zero (at {path}:5)" \
        in result.output
    assert "PASS 2" in result.output


def test_help_says_the_script_is_executed():
    result = CliRunner().invoke(main, ["prove", "--help"])
    assert result.exit_code == 0 and "run any code" in result.output and "UNPROVED" in result.output


@pytest.mark.parametrize("example", ["softmax_temperature.py", "correlated_qk.py", "wrong_step.py"])
def test_every_line_of_the_examples_is_checked_or_marked(example):
    from proofs.runner import load_script

    _, found = load_script(EXAMPLES / example)
    assert found
    for _, derivation in found:
        assert derivation.unjustified() == []


def ctrl_c_during_the_first(monkeypatch) -> None:
    """Press Ctrl-C (SIGINT) while the derivation named "first" is checked."""
    import signal

    import proofs.runner

    real = proofs.runner.check_derivation

    def check(derivation, *args, **kwargs):
        if derivation.name == "first":
            signal.raise_signal(signal.SIGINT)
        return real(derivation, *args, **kwargs)

    monkeypatch.setattr(proofs.runner, "check_derivation", check)


def test_ctrl_c_stops_after_the_derivation_in_progress_and_saves_it(tmp_path, monkeypatch, schema):
    import signal

    if not hasattr(signal, "SIGINT"):
        pytest.skip("needs POSIX signals")
    path = tmp_path / "two.py"
    path.write_text("import sympy as sp\nfrom proofs import Derivation, Step\nx = sp.Symbol('x')\n"
                    "first = Derivation('first', 'f', '-', [Step(x + x, 2 * x, 'double')])\n"
                    "second = Derivation('second', 's', '-', [Step(x * x, x**2, 'square')])\n", encoding="utf-8")
    ctrl_c_during_the_first(monkeypatch)
    out = tmp_path / "r.json"
    result = prove(path, "--json", out)
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "INCOMPLETE" in result.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, schema)
    assert doc["incomplete"] and doc["not_run"] == ["variable second"] and not doc["proved"]
    assert [d["name"] for d in doc["derivations"]] == ["first"]


def test_correlated_qk_fails_when_the_pairs_are_stated_uncorrelated(tmp_path):
    """Moments of uncorrelated pairs (rho = 0) under the same claim: steps 5 and 6 are false,
    with a counterexample at some rho != 0."""
    path = mutated(tmp_path, "correlated_qk.py", "pair_moments = gaussian_pair_moments(q[l], k[l], rho)",
                   "pair_moments = gaussian_pair_moments(q[l], k[l], 0)")
    result = prove(path, "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    steps = json.loads((tmp_path / "r.json").read_text())["derivations"][0]["steps"]
    assert [s["status"] for s in steps[4:6]] == ["FAIL", "FAIL"]
    assert sp.Rational(steps[5]["counterexample"]["values"]["rho"]) != 0


# --------------------------------------------------------------------------- review fixes


def script(tmp_path: Path, body: str, name: str = "s.py") -> Path:
    path = tmp_path / name
    path.write_text("import sympy as sp\nfrom proofs import *\n" + body, encoding="utf-8")
    return path


def test_a_line_taken_on_trust_is_not_proved_anywhere(tmp_path, schema):
    path = script(tmp_path, "x = sp.Symbol('x', real=True)\n"
                            "d = Derivation('d', 'd', '-', [Step(x**2, x*x, 'square'),\n"
                            "    Step.define(None, 5, 'and then this is 5')])\n")
    tex, out = tmp_path / "d.tex", tmp_path / "d.json"
    result = prove(path, "--json", out, "--latex", tex, "--no-pdf")
    assert result.exit_code == 1, result.output
    assert "d: UNJUSTIFIED" in result.output and "taken on trust" in result.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, schema)
    assert not doc["proved"] and doc["derivations"][0]["status"] == "UNJUSTIFIED"
    assert "and then this is 5" in doc["derivations"][0]["status_reason"]
    assert doc["summary"]["derivations"]["PROVED"] == 0 and doc["summary"]["derivations"]["UNJUSTIFIED"] == 1
    body = tex.read_text()
    check_latex(body)
    assert "UNJUSTIFIED" in body and "all checked steps pass" not in body


def test_the_latex_summary_counts_fail_and_unproved_apart(tmp_path):
    path = script(tmp_path, "x = sp.Symbol('x', real=True)\ny = sp.Symbol('y', positive=True)\n"
                            "d = Derivation('d', 'd', '-', [Step(x + x, 3 * x, 'false'),\n"
                            "    Step(sp.atan(y) + sp.atan(1 / y), sp.pi / 2, 'true, not reduced')])\n")
    tex = tmp_path / "d.tex"
    result = prove(path, "--latex", tex, "--no-pdf")
    assert result.exit_code == 1
    body = tex.read_text()
    assert "FAIL 1, UNPROVED 1" in body and "d: FAILED" in body


def test_json_to_stdout_stays_json_when_the_script_prints(tmp_path):
    path = script(tmp_path, "print('hello from the script')\nx = sp.Symbol('x')\n"
                            "d = Derivation('d', 'd', '-', [Step(x + x, 2 * x, 'double', Custom(lambda: (print('x') or True, 'ok'), 'printing'))])\n")
    result = CliRunner().invoke(main, ["prove", str(path), "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["proved"] and "hello from the script" in result.stderr


def test_ctrl_c_while_the_script_loads_exits_130_at_once(tmp_path):
    import signal
    import time

    if not hasattr(signal, "SIGINT"):
        pytest.skip("needs POSIX signals")
    path = script(tmp_path, "import time\ntime.sleep(30)\nx = sp.Symbol('x')\n"
                            "d = Derivation('d', 'd', '-', [Step(x + x, 2 * x, 'double')])\n")
    proc = subprocess.Popen([sys.executable, "-m", "verify.cli", "prove", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(4)  # the import of the toolkit and the start of the script
    start = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=25)
    assert time.perf_counter() - start < 10
    assert proc.returncode == 130, out
    assert "interrupted while loading" in out and "Traceback" not in out


def test_each_table_is_printed_as_its_derivation_finishes(tmp_path, monkeypatch):
    import proofs.runner
    import verify.cli.prove

    path = script(tmp_path, "x = sp.Symbol('x')\n"
                            "first = Derivation('first', 'f', '-', [Step(x + x, 2 * x, 'double')])\n"
                            "second = Derivation('second', 's', '-', [Step(x * x, x**2, 'square')])\n")
    printed: list[str] = []
    real_print, real_check = verify.cli.prove.print_report, proofs.runner.check_derivation
    monkeypatch.setattr(verify.cli.prove, "print_report", lambda r, c: (printed.append(r.name), real_print(r, c)))

    def check(derivation, *args, **kwargs):
        printed.append(f"checking {derivation.name}")
        return real_check(derivation, *args, **kwargs)

    monkeypatch.setattr(proofs.runner, "check_derivation", check)
    assert prove(path).exit_code == 0
    assert printed == ["checking first", "first", "checking second", "second"]


def test_an_interrupted_latex_is_marked_incomplete(tmp_path, monkeypatch):
    import signal

    if not hasattr(signal, "SIGINT"):
        pytest.skip("needs POSIX signals")
    path = script(tmp_path, "x = sp.Symbol('x')\n"
                            "first = Derivation('first', 'f', '-', [Step(x + x, 2 * x, 'double')])\n"
                            "second = Derivation('second', 's', '-', [Step(x * x, x**2, 'square')])\n")
    ctrl_c_during_the_first(monkeypatch)
    tex = tmp_path / "p.tex"
    result = prove(path, "--latex", tex, "--no-pdf")
    assert result.exit_code == 130, result.output
    body = tex.read_text()
    check_latex(body)
    assert "INCOMPLETE" in body and "variable second" in body


def test_a_lone_dollar_with_latex_still_prints_the_results_and_names_the_step(tmp_path):
    path = script(tmp_path, "x = sp.Symbol('x')\n"
                            "d = Derivation('d', 'd', '-', [Step(x + x, 2 * x, 'costs $5'), Step(x + x, 3 * x, 'false')])\n")
    result = prove(path, "--latex", tmp_path / "p.tex", "--no-pdf")
    assert result.exit_code == 1
    assert "FAIL d, step 2 (false)" in result.output and "PASS 1, FAIL 1" in result.output
    assert "step 1 (costs $5)" in result.output and "unbalanced $" in result.output
    assert result.output.index("FAIL d, step 2") < result.output.index("unbalanced $")
    assert not (tmp_path / "p.tex").exists()


def test_two_derivations_with_one_name_are_an_error_naming_both(tmp_path):
    path = script(tmp_path, "x = sp.Symbol('x')\n"
                            "a = Derivation('same', 'a', '-', [Step(x + x, 2 * x, 'double')])\n"
                            "b = Derivation('same', 'b', '-', [Step(x * x, x**2, 'square')])\n")
    result = prove(path)
    assert result.exit_code == 1
    assert "two derivations are named 'same'" in result.output
    assert "variable a" in result.output and "variable b" in result.output


def test_a_derivation_that_cannot_be_built_counts_as_error_and_unchecked_says_why(tmp_path, schema):
    path = script(tmp_path, "x = sp.Symbol('x')\n"
                            "@register('broken', 'b')\ndef broken():\n    raise RuntimeError('no')\n"
                            "defs = Derivation('defs', 'd', '-', [Step.define(x, 2, 'x is 2')])\n")
    out = tmp_path / "r.json"
    result = prove(path, "--json", out)
    assert result.exit_code == 1
    assert "ERROR 1" in result.output and "UNCHECKED 1" in result.output
    assert "no step is checked" in result.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, schema)
    assert doc["summary"]["derivations"]["ERROR"] == 1


def test_json_assumptions_lists_the_assume_lines(tmp_path):
    path = script(tmp_path, "x = sp.Symbol('x', positive=True)\n"
                            "d = Derivation('d', 'd', '-', [Step.assume('x > 0', reason='x is positive'),\n"
                            "    Step(sp.sqrt(x**2), x, 'root of a square')], assumptions=['stated in words'])\n")
    out = tmp_path / "r.json"
    assert prove(path, "--json", out).exit_code == 0
    assumptions = json.loads(out.read_text())["derivations"][0]["assumptions"]
    assert "stated in words" in assumptions and any("x is positive" in a for a in assumptions)


def test_help_says_exactly_how_the_script_is_run():
    result = CliRunner().invoke(main, ["prove", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert "as `python FILE` would" not in text
    assert '__name__ is not "__main__"' in text and "sys.argv is attnverify's" in text


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs a /proc file system (Linux)")
def test_an_output_in_proc_says_the_real_cause():
    result = prove(EXAMPLES / "wrong_step.py", "--latex", "/proc/x.tex")
    assert result.exit_code == 2
    assert "is not writable" not in result.output
    assert "cannot create a file in the directory '/proc'" in result.output
