"""Output paths are checked before any work: one line naming the option, exit 2; missing
folders are created, by every command alike."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proofs.claims import CheckOutcome, Claim, Evidence, Method, Source, Verdict
from verify._paths import PLOT_SUFFIXES, check_output_path
from verify.cli import main


@pytest.fixture
def calls(monkeypatch):
    """A one-claim catalogue that counts how often its check ran."""
    import proofs.catalogue

    ran = []

    def proved():
        ran.append(1)
        return CheckOutcome(Verdict.PROVED, Method.SYMBOLIC, [Evidence("derivation", "1 - 1 simplifies to 0")])

    claim = Claim("seed003.demo", "demo", Source("003_ea119736e090508e.txt", "Lema 9"), "$1 = 1$", [proved])
    monkeypatch.setattr(proofs.catalogue, "all_claims", lambda: [claim])
    return ran


def bad_paths(tmp_path):
    """Paths no one can write, root included: under a regular file, inside /proc, a directory."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "a-dir.png").mkdir()
    return {
        "parent is a file": (a_file / "out.json", "is a file, not a directory"),
        "grandparent is a file": (a_file / "sub" / "out.json", "is a file, not a directory"),
        "in /proc": (Path("/proc/attnverify-test/out.json"), "cannot create the directory"),
        "a directory": (tmp_path / "a-dir.png", "is a directory"),
    }


def _one_error_line(output: str, option: str) -> str:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"'{option}'" in errors[0], output
    return errors[0]


@pytest.mark.parametrize("kind", ["parent is a file", "grandparent is a file", "in /proc", "a directory"])
def test_check_refuses_an_unwritable_json_path_before_running_anything(tmp_path, calls, kind):
    path, why = bad_paths(tmp_path)[kind]
    result = CliRunner().invoke(main, ["check", "--no-progress", "--json", str(path)])
    assert result.exit_code == 2
    assert why in _one_error_line(result.output, "--json")
    assert calls == []


@pytest.mark.parametrize("option", ["--json", "--plot"])
@pytest.mark.parametrize("kind", ["parent is a file", "in /proc", "a directory"])
def test_mc_refuses_unwritable_paths_before_computing(tmp_path, monkeypatch, option, kind):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "variance_sweep", lambda **kw: pytest.fail("the sweep ran"))
    path, why = bad_paths(tmp_path)[kind]
    path = path.with_suffix(".png") if option == "--plot" and kind != "a directory" else path
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "100", option, str(path)])
    assert result.exit_code == 2
    assert why in _one_error_line(result.output, option)


def test_report_refuses_an_out_folder_under_a_file(tmp_path, calls):
    path, why = bad_paths(tmp_path)["parent is a file"]
    result = CliRunner().invoke(main, ["report", "--out", str(path)])
    assert result.exit_code == 2 and why in _one_error_line(result.output, "--out")
    assert calls == []


def test_plot_formats_are_checked_before_computing(monkeypatch, tmp_path):
    from verify.montecarlo import experiments, plots

    assert PLOT_SUFFIXES == plots.SUFFIXES  # what the CLI accepts is what the plots can write
    monkeypatch.setattr(experiments, "variance_sweep", lambda **kw: pytest.fail("the sweep ran"))
    result = CliRunner().invoke(main, ["mc", "variance", "--plot", str(tmp_path / "x.jpg")])
    assert result.exit_code == 2
    assert "expected a file name ending in .png, .pdf, .svg; got" in _one_error_line(result.output, "--plot")


@pytest.mark.parametrize("suffix", PLOT_SUFFIXES)
def test_every_accepted_plot_format_is_written(tmp_path, suffix):
    path = tmp_path / f"p{suffix}"
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "1000", "--seed", "1",
                                       "--plot", str(path)])
    assert result.exit_code == 0, result.output
    assert path.stat().st_size > 1000


def test_missing_folders_are_created_by_check_mc_and_report(tmp_path, calls, monkeypatch):
    out = tmp_path / "new" / "deeper" / "results.json"
    result = CliRunner().invoke(main, ["check", "--no-progress", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["claims"] == 1
    plot = tmp_path / "mc" / "v.png"
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "1000", "--plot", str(plot)])
    assert result.exit_code == 0 and plot.exists()
    import proofs.report

    monkeypatch.setattr(proofs.report, "write_report", lambda results, out_dir, crosscheck=None: out_dir / "report.tex")
    folder = tmp_path / "r" / "s"
    result = CliRunner().invoke(main, ["report", "--out", str(folder), "--no-pdf", "--no-crosscheck"])
    assert result.exit_code == 0, result.output
    assert folder.is_dir()


def test_check_output_path_on_good_and_bad_paths(tmp_path):
    assert check_output_path(tmp_path / "x" / "y.json") == tmp_path / "x" / "y.json"
    assert (tmp_path / "x").is_dir()
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    assert check_output_path(existing) == existing and existing.read_text() == "{}"  # not truncated
    with pytest.raises(ValueError, match="is a file, not a directory"):
        check_output_path(existing / "z.json")
    with pytest.raises(ValueError, match="expected a file name ending in .png"):
        check_output_path(tmp_path / "a.gif", suffixes=(".png",))


_KINDS = ["new file", "existing file", "missing parent", "parent is a file", "a directory", "in /proc",
          "dash", "relative name"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(_KINDS), name=st.text(alphabet="abcxyz_-.[]", min_size=1, max_size=12),
       command=st.sampled_from(["check", "mc"]))
def test_any_output_path_exits_zero_or_two_with_one_line(tmp_path_factory, calls, monkeypatch, kind, name,
                                                         command):
    """Whatever the path, the command either works (0) or says why in one line (2); never a traceback."""
    from verify.montecarlo import experiments

    base = tmp_path_factory.mktemp("paths")
    monkeypatch.chdir(base)
    name = name.strip(".") or "x"
    a_file = base / "a-file"
    a_file.write_text("x")
    path = {
        "new file": base / f"{name}.json",
        "existing file": a_file,
        "missing parent": base / name / "sub" / "out.json",
        "parent is a file": a_file / f"{name}.json",
        "a directory": base,
        "in /proc": f"/proc/{name}/out.json",
        "dash": "-",
        "relative name": f"{name}.json",
    }[kind]
    if command == "mc":
        monkeypatch.setattr(experiments, "variance_sweep", _tiny(experiments.variance_sweep))
        args = ["mc", "variance", "--dk", "2", "--samples", "100", "--seed", "1", "--json", str(path)]
    else:
        args = ["check", "--no-progress", "--json", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        _one_error_line(result.output, "--json")
    elif path != "-":
        json.loads((base / path).read_text())


def _tiny(sweep):
    def run(**kw):
        return sweep(**{**kw, "samples": 100, "workers": 1})

    return run


def test_a_write_that_fails_after_the_check_is_one_line_exit_one(tmp_path, calls, monkeypatch):
    """A disk that fills between the check and the write: one line naming the option, no traceback."""
    import errno

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    result = CliRunner().invoke(main, ["check", "--no-progress", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert "--json: No space left on device" in line


def test_devices_and_existing_files_are_accepted(tmp_path, calls):
    for target in ("/dev/null", tmp_path / "old.json"):
        if target != "/dev/null":
            target.write_text("{}")
        result = CliRunner().invoke(main, ["check", "--no-progress", "--json", str(target)])
        assert result.exit_code == 0, result.output


def _fake_sweep(monkeypatch):
    """mc variance at 100 samples on one worker (the paths are under test, not the numbers)."""
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "variance_sweep", _tiny(experiments.variance_sweep))


def test_dot_dot_is_resolved_before_missing_folders_are_created(tmp_path, calls, monkeypatch):
    """``nope/../x.json`` writes x.json and leaves no folder 'nope' behind, for every output option."""
    _fake_sweep(monkeypatch)
    import proofs.report

    monkeypatch.setattr(proofs.report, "write_report", lambda results, out_dir, crosscheck=None: out_dir / "report.tex")
    runs = {
        "check --json": (["check", "--no-progress", "--json"], "c.json"),
        "mc --json": (["mc", "variance", "--dk", "2", "--seed", "1", "--json"], "m.json"),
        "mc --plot": (["mc", "variance", "--dk", "2", "--seed", "1", "--plot"], "m.png"),
        "report --out": (["report", "--no-pdf", "--no-crosscheck", "--out"], "r"),
    }
    for what, (args, name) in runs.items():
        nope = tmp_path / f"nope-{name}"
        result = CliRunner().invoke(main, [*args, str(nope / "deeper" / ".." / ".." / name)])
        assert result.exit_code == 0, (what, result.output)
        assert (tmp_path / name).exists(), what
        assert not nope.exists(), f"{what} created the unused folder {nope}"


def test_dot_dot_follows_symbolic_links_as_the_system_does(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b")
    # the system reads link/.. as a (the link's target's parent), not as tmp_path
    assert check_output_path(tmp_path / "link" / ".." / "x.json") == tmp_path / "a" / "x.json"
    assert check_output_path(tmp_path / "new" / ".." / "y.json") == tmp_path / "y.json"
    assert not (tmp_path / "new").exists()
    assert check_output_path(tmp_path / "d" / ".." / "e", directory=True) == tmp_path / "e"
    assert (tmp_path / "e").is_dir() and not (tmp_path / "d").exists()
    plain = tmp_path / "p" / "q.json"  # no '..': returned as given
    assert check_output_path(plain) == plain


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("target", ["/proc/self/status", "/proc/version", "/dev/full"])
def test_an_existing_file_that_takes_no_writes_is_refused_up_front(calls, target):
    """Written zero bytes when the command line is read: EINVAL, EIO or ENOSPC is exit 2, before any work
    (as root too, for whom os.access says every file is writable)."""
    if not Path(target).exists():
        pytest.skip(f"no {target}")
    result = CliRunner().invoke(main, ["check", "--no-progress", "--json", target])
    assert result.exit_code == 2, result.output
    assert target in _one_error_line(result.output, "--json")
    assert calls == []


def test_the_zero_byte_probe_changes_no_file_and_accepts_devices(tmp_path, calls):
    old = tmp_path / "old.json"
    old.write_text("{}")
    os.utime(old, (1_000_000, 1_000_000))
    assert check_output_path(old) == old
    assert old.read_text() == "{}" and old.stat().st_mtime == 1_000_000
    for device in ("/dev/null", "/dev/stdout"):
        if Path(device).exists():
            assert check_output_path(Path(device)) == Path(device)


@pytest.mark.parametrize("spelling", ["same", "dot-dot", "symlink", "hard link"])
def test_mc_refuses_one_file_for_both_json_and_plot(tmp_path, monkeypatch, spelling):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "variance_sweep", lambda **kw: pytest.fail("the sweep ran"))
    first = tmp_path / "o3.svg"
    if spelling in ("symlink", "hard link"):
        first.write_text("old")
    second = {"same": first, "dot-dot": tmp_path / "sub" / ".." / "o3.svg", "symlink": tmp_path / "link.svg",
              "hard link": tmp_path / "hard.svg"}[spelling]
    if spelling == "symlink":
        second.symlink_to(first)
    if spelling == "hard link":
        os.link(first, second)
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "100",
                                       "--json", str(first), "--plot", str(second)])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output, "--json")
    assert "'--plot'" in line and "same file" in line


def test_mc_writes_json_and_plot_to_two_files(tmp_path, monkeypatch):
    _fake_sweep(monkeypatch)
    j, p = tmp_path / "o3.json", tmp_path / "o3.svg"
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--seed", "1", "--json", str(j), "--plot", str(p)])
    assert result.exit_code == 0, result.output
    assert json.loads(j.read_text())["experiment"] == "variance" and p.read_text().lstrip().startswith("<?xml")
