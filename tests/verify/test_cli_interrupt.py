"""Ctrl-C wherever it lands: exit 130, what finished saved (marked incomplete), no traceback,
never "Aborted!" nor a usage error.

In-process tests deliver a real SIGINT (``signal.raise_signal``) at chosen moments; the last
tests send one to a separate process.
"""

import importlib.abc
import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources

import jsonschema
import pytest
from click.testing import CliRunner

from proofs.claims import CheckOutcome, Claim, Evidence, Method, Source, Verdict
from verify.cli import main

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="needs POSIX signals")


def ctrl_c():
    signal.raise_signal(signal.SIGINT)


def once_then(fn, times=1):
    """``fn`` that sends Ctrl-C ``times`` times the first time it is called."""
    calls = []

    def wrapped(*args, **kwargs):
        if not calls:
            for _ in range(times):
                ctrl_c()
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def mc(tmp_path, *args):
    out = tmp_path / "mc.json"
    result = CliRunner().invoke(main, ["mc", "variance", "--seed", "1", "--workers", "1", "--json", str(out),
                                       "--plot", str(tmp_path / "mc.png"), *args])
    assert "Traceback" not in result.output and "Aborted!" not in result.output, result.output
    return result, (json.loads(out.read_text()) if out.exists() else None)


def samples(doc):
    return [(p["d_k"], p["result"]["samples"]) for p in doc["points"]]


def test_ctrl_c_while_the_options_are_read_exits_130_with_nothing_written(tmp_path, monkeypatch):
    import verify.cli.mc

    monkeypatch.setattr(verify.cli.mc, "parse_dks", once_then(verify.cli.mc.parse_dks))
    result, doc = mc(tmp_path, "--dk", "2", "--samples", "1000")
    assert result.exit_code == 130 and "interrupted" in result.output
    assert doc is None


def test_ctrl_c_before_the_first_block_saves_a_partial_point(tmp_path, monkeypatch):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "run_mc", once_then(experiments.run_mc))
    result, doc = mc(tmp_path, "--dk", "64", "--samples", "4e5")
    assert result.exit_code == 130, result.output
    assert doc["incomplete"] is True and "INCOMPLETE" in result.output
    [(d_k, n)] = samples(doc)
    assert d_k == 64 and 0 < n <= 400_000  # cut short (or, rarely, stopped in its last merge)
    assert (tmp_path / "mc.png").exists()


def test_ctrl_c_in_a_verdict_after_a_point_keeps_that_point(tmp_path, monkeypatch):
    """The unlucky moment of the report: after a point finishes, outside the engine."""
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "check_equal", once_then(experiments.check_equal))
    result, doc = mc(tmp_path, "--dk", "1,64,128", "--samples", "4e5")
    assert result.exit_code == 130, result.output
    got = samples(doc)
    assert doc["incomplete"] is True
    assert got == [(1, 400_000)]  # the finished point, whole; no new point starts


class _CtrlCOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, name):
        self.name, self.fired = name, False

    def find_spec(self, fullname, path, target=None):
        if fullname == self.name and not self.fired:
            self.fired = True
            ctrl_c()
        return None


def test_ctrl_c_inside_a_lazy_import_after_the_run_still_writes_everything(tmp_path, monkeypatch):
    finder = _CtrlCOnImport("verify.montecarlo.plots")
    monkeypatch.delitem(sys.modules, "verify.montecarlo.plots", raising=False)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    result, doc = mc(tmp_path, "--dk", "1,2", "--samples", "2000")
    assert finder.fired
    assert result.exit_code == 130, result.output
    assert doc["incomplete"] is False and samples(doc) == [(1, 2000), (2, 2000)]
    assert (tmp_path / "mc.png").exists()
    assert "every point had finished" in result.output


def test_ctrl_c_inside_the_lazy_import_before_the_run_saves_an_empty_incomplete_sweep(tmp_path, monkeypatch):
    finder = _CtrlCOnImport("verify.montecarlo.experiments")
    for name in [m for m in sys.modules if m.startswith("verify.montecarlo")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    result, doc = mc(tmp_path, "--dk", "1,2", "--samples", "2000")
    assert finder.fired
    assert result.exit_code == 130, result.output
    assert doc["incomplete"] is True and doc["points"] == []


def test_ctrl_c_while_the_tables_print_still_exits_130(tmp_path, monkeypatch):
    import verify.cli.mc

    monkeypatch.setattr(verify.cli.mc, "_variance_table", once_then(verify.cli.mc._variance_table))
    result, doc = mc(tmp_path, "--dk", "2", "--samples", "2000")
    assert result.exit_code == 130 and samples(doc) == [(2, 2000)]


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "check_equal", once_then(experiments.check_equal, times=2))
    result, doc = mc(tmp_path, "--dk", "1,2", "--samples", "2000")
    assert result.exit_code == 130 and "interrupted" in result.output


def _claims(monkeypatch, n=3, interrupt_at=1):
    import proofs.catalogue

    def make(i):
        def run():
            if i == interrupt_at:
                ctrl_c()
            return CheckOutcome(Verdict.PROVED, Method.SYMBOLIC, [Evidence("derivation", f"claim {i} holds")])

        return Claim(f"c{i}", "demo", Source("003_ea119736e090508e.txt", f"Lema {i}"), "$1 = 1$", [run])

    monkeypatch.setattr(proofs.catalogue, "all_claims", lambda: [make(i) for i in range(n)])


def test_check_stops_after_the_claim_in_progress_and_saves_the_finished_ones(tmp_path, monkeypatch):
    _claims(monkeypatch)
    out = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["check", "--no-progress", "--json", str(out)])
    assert result.exit_code == 130 and "Aborted!" not in result.output
    doc = json.loads(out.read_text())
    assert [r["id"] for r in doc["results"]] == ["c0", "c1"] and doc["incomplete"] is True
    assert "1 of 3 claims: interrupted" in doc["not_run"]
    assert "INCOMPLETE" in result.output
    schema = json.loads(resources.files("proofs").joinpath("schema/check.schema.json").read_text())
    jsonschema.validate(doc, schema)


def test_report_interrupted_writes_nothing(tmp_path, monkeypatch):
    _claims(monkeypatch)
    result = CliRunner().invoke(main, ["report", "--out", str(tmp_path / "r"), "--no-pdf"])
    assert result.exit_code == 130 and "report not written" in result.output
    assert not (tmp_path / "r" / "report.tex").exists()


def test_derive_interrupted_exits_130(monkeypatch):
    from proofs import derivations

    name = next(iter(derivations.DERIVATIONS))
    monkeypatch.setitem(derivations.DERIVATIONS, name, lambda: (ctrl_c(), time.sleep(1)))
    result = CliRunner().invoke(main, ["derive", name])
    assert result.exit_code == 130 and "Aborted!" not in result.output


def _threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc to see the engine's threads")
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_a_real_ctrl_c_during_a_run_exits_130_with_the_finished_points(tmp_path, delay):
    """SIGINT sent to a separate process once its engine threads run, then after ``delay``."""
    exe = os.path.join(os.path.dirname(sys.executable), "attnverify")
    out = tmp_path / "r.json"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([exe, "mc", "variance", "--dk", "1..256", "--samples", "1e6", "--seed", "1",
                             "--workers", "2", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while _threads(proc.pid) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and b"Aborted!" not in stderr
    doc = json.loads(out.read_text())
    assert doc["points"] and doc["incomplete"] is True
    *whole, last = samples(doc)
    assert all(n == 1_000_000 for _, n in whole) and 0 < last[1] <= 1_000_000


def test_the_gate_defers_the_first_ctrl_c_and_restores_the_handler():
    from verify._interrupt import InterruptGate

    before = signal.getsignal(signal.SIGINT)
    with InterruptGate() as gate:
        ctrl_c()  # recorded, not raised
        assert gate.pending and gate.stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()  # the second: at once
    assert signal.getsignal(signal.SIGINT) is before


def test_importing_the_command_line_leaves_the_programs_ctrl_c_alone():
    script = ("import signal, verify.cli, verify.cli.mc, verify.cli.check; "
              "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr
