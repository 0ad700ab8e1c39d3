"""The catalogue's figures: a private folder by default, and a figure that cannot be written
never changes a verdict (ATTNVERIFY_FIGURES pointing somewhere unwritable)."""

import stat
import tempfile
from pathlib import Path

import pytest

from proofs.catalogue import _kit, seed_003


@pytest.fixture
def fresh_private_folder(monkeypatch):
    monkeypatch.delenv("ATTNVERIFY_FIGURES", raising=False)
    if hasattr(_kit, "_private_figures"):
        _kit._private_figures.cache_clear()
    yield
    if hasattr(_kit, "_private_figures"):
        _kit._private_figures.cache_clear()


def test_default_figures_folder_is_private_to_the_user(fresh_private_folder):
    folder = _kit.figure_path("x.png").parent
    assert folder != Path(tempfile.gettempdir()) / "attnverify-figures"  # not one folder shared by all users
    mode = folder.stat().st_mode
    assert stat.S_ISDIR(mode) and mode & 0o077 == 0, oct(mode)
    assert _kit.figure_path("y.png").parent == folder  # one folder per run


def _unwritable(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return [a_file / "figures", Path("/proc/attnverify-figures")]


def _tiny(sweep):
    return lambda d_ks, **kw: sweep(d_ks[:2], **{**kw, "samples": 800_000})


@pytest.fixture
def tiny_sweeps(monkeypatch):
    from verify.montecarlo import experiments

    monkeypatch.setattr(experiments, "variance_sweep", _tiny(experiments.variance_sweep))
    monkeypatch.setattr(experiments, "projected_sweep", _tiny(experiments.projected_sweep))


def test_an_unwritable_figures_folder_keeps_the_verdict_and_says_so(tmp_path, monkeypatch, tiny_sweeps):
    monkeypatch.setenv("ATTNVERIFY_FIGURES", str(tmp_path / "ok"))
    written = seed_003.check_variance_monte_carlo(scaled=True)
    assert [Path(f).name for e in written.evidence for f in e.figures] == ["seed003-variance-scaled.png"]
    for folder in _unwritable(tmp_path):
        monkeypatch.setenv("ATTNVERIFY_FIGURES", str(folder))
        outcome = seed_003.check_variance_monte_carlo(scaled=True)
        assert outcome.verdict == written.verdict
        assert all(not e.figures for e in outcome.evidence)
        notes = [e.summary for e in outcome.evidence if e.kind == "note"]
        assert len(notes) == 1 and "seed003-variance-scaled.png not written" in notes[0]
        assert str(folder) in notes[0] and "ATTNVERIFY_FIGURES" in notes[0]


def test_write_figure_reports_but_does_not_hide_plotting_bugs(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVERIFY_FIGURES", str(tmp_path))
    figures, notes = _kit.write_figure(lambda path: path.write_bytes(b"png"), "a.png")
    assert figures == [str(tmp_path / "a.png")] and notes == []

    def broken(path):
        raise ZeroDivisionError("a bug in the plot")

    with pytest.raises(ZeroDivisionError):  # not an unwritable folder: a defect, reported as a crash
        _kit.write_figure(broken, "b.png")
