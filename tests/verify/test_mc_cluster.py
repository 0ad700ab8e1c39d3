"""Monte Carlo blocks on an executor: the local engine's bits on a Dask LocalCluster (2 worker
processes) and on concurrent.futures executors; a worker killed mid-run; stop and Ctrl-C; a bad
address; the task planning; ``--dask`` on the command line."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from verify.cli import main
from verify.montecarlo import DotSampler, SaturationSampler, run_mc
from verify.montecarlo import cluster as C
from verify.montecarlo import engine as E
from verify.montecarlo.experiments import saturation_sweep, variance_sweep

from .test_mc_engine import fingerprint

pytestmark = pytest.mark.timeout(300)

NO_DASK = f"distributed is not installed ({C.DASK_INSTALL})"


def _distributed():
    return pytest.importorskip("distributed", reason=NO_DASK)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 single-thread worker processes, shut down after the module."""
    distributed = _distributed()
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as c:
        yield c


def sweep_bits(sweep):
    return [(p.d_k, fingerprint(p.result)) for p in sweep.points]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------- Dask


def test_a_variance_sweep_on_the_cluster_has_the_local_bits(client):
    kw = dict(dist="t5", samples=100_000, seed=11, progress=False)
    local = variance_sweep((1, 16, 64), workers=2, **kw)
    remote = variance_sweep((1, 16, 64), executor=client, **kw)
    assert sweep_bits(remote) == sweep_bits(local)
    assert remote.verdicts == local.verdicts
    assert all(p.result.executor.startswith("dask tcp://") and "2 workers" in p.result.executor for p in remote.points)
    assert all(p.result.chunk_size < p.result.samples for p in remote.points)  # several tasks per point
    other = variance_sweep((1, 16, 64), executor=client, **{**kw, "seed": 12})
    assert sweep_bits(other) != sweep_bits(local)  # the comparison can fail


def test_a_saturation_sweep_on_the_cluster_has_the_local_bits(client):
    kw = dict(n_keys=8, samples=20_000, seed=5, block_size=500, progress=False)
    local = saturation_sweep((1, 64), workers=1, **kw)
    remote = saturation_sweep((1, 64), executor=client, **kw)
    assert sweep_bits(remote) == sweep_bits(local)
    assert [f.verdict for f in remote.findings] == [f.verdict for f in local.findings]


def test_the_relative_error_rule_stops_at_the_local_block(client):
    kw = dict(seed=2, rel_error=0.02, alpha=1e-3, block_size=1000)
    local = run_mc(DotSampler(8), 10**7, workers=1, **kw)
    remote = run_mc(DotSampler(8), 10**7, executor=client, **kw)
    assert local.stop_reason == remote.stop_reason == "rel_error"
    assert remote.samples == local.samples < 10**7
    assert fingerprint(remote) == fingerprint(local)
    assert _idle_soon(client), client.processing()  # the tasks past the stopping block were cancelled


def _idle_soon(client, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(client.processing().values()):
            return True
        time.sleep(0.05)
    return False


def test_a_stop_event_cancels_the_clusters_tasks_and_keeps_the_merged_prefix(client):
    stop = threading.Event()

    def callback(info):
        if info.block == 2:
            stop.set()

    s = DotSampler(64)
    remote = run_mc(s, 4 * 10**6, seed=3, block_size=1024, executor=client, callback=callback, stop=stop)
    assert remote.incomplete and remote.stop_reason == "interrupted"
    assert remote.blocks == 3
    full = run_mc(s, remote.samples, seed=3, block_size=1024, workers=1)
    assert fingerprint(remote) == fingerprint(full)  # exactly the blocks merged, in order
    assert _idle_soon(client), client.processing()  # nothing left running on the cluster


def test_keyboard_interrupt_cancels_the_clusters_tasks_and_keeps_the_merged_prefix(client):
    def callback(info):
        if info.block == 1:
            raise KeyboardInterrupt

    s = DotSampler(64)
    remote = run_mc(s, 4 * 10**6, seed=4, block_size=1024, executor=client, callback=callback)
    assert remote.incomplete and remote.blocks == 2
    assert fingerprint(remote) == fingerprint(run_mc(s, 2048, seed=4, block_size=1024, workers=1))
    assert _idle_soon(client), client.processing()


def test_progress_follows_task_completion(client, monkeypatch):
    seen = []
    monkeypatch.setattr(E._Progress, "update", lambda self, done, note="": seen.append(done))
    r = run_mc(DotSampler(4), 200_000, seed=1, block_size=1000, chunk_size=20_000, executor=client, progress=True)
    assert r.chunk_size == 20_000
    assert seen == [20_000 * (i + 1) for i in range(10)]  # one update per task, not per block


def test_a_worker_killed_mid_run_costs_only_its_blocks(client):
    """SIGKILL one worker process while it computes a task: the scheduler recomputes its tasks
    on the other worker (the nanny restarts the dead one) and the result keeps every bit."""
    before = client.run(os.getpid)
    killed = {}

    def callback(info):
        if info.block == 0:
            busy = {w: keys for w, keys in client.processing().items() if keys}
            victim = next(iter(busy))  # a worker holding a task right now
            killed["worker"], killed["tasks"] = victim, list(busy[victim])
            os.kill(before[victim], signal.SIGKILL)

    s = DotSampler(64)
    remote = run_mc(s, 10**6, seed=9, block_size=4096, executor=client, callback=callback)
    assert killed["tasks"], "the killed worker held no task"
    local = run_mc(s, 10**6, seed=9, block_size=4096, workers=2)
    assert not remote.incomplete and remote.samples == 10**6
    assert fingerprint(remote) == fingerprint(local)
    client.wait_for_workers(2, timeout=60)
    after = client.run(os.getpid)
    assert before[killed["worker"]] not in after.values()  # it really died (and was replaced)


def test_dask_address_of_a_running_scheduler_on_the_command_line(client, tmp_path):
    address = client.scheduler.address
    args = ["mc", "saturation", "--dk", "2,16", "--samples", "4000", "--seed", "2", "--keys", "4"]
    remote = CliRunner().invoke(main, [*args, "--dask", address, "--json", str(tmp_path / "d.json")])
    assert remote.exit_code == 0, remote.output
    assert f"Dask scheduler {address}: 2 workers, 2 threads; dashboard http" in remote.output
    CliRunner().invoke(main, [*args, "--json", str(tmp_path / "l.json")])
    d, l = (json.loads((tmp_path / f).read_text()) for f in ("d.json", "l.json"))
    assert [p["result"]["accumulators"] for p in d["points"]] == [p["result"]["accumulators"] for p in l["points"]]


def test_an_unreachable_address_is_a_clear_error_within_the_timeout():
    _distributed()
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"could not reach a Dask scheduler at '{address}' within 2 s"):
        with C.open_client(address, timeout=2, announce=lambda line: None):
            pass
    assert time.monotonic() - t0 < 15


def test_dask_address_on_the_command_line(monkeypatch):
    _distributed()
    monkeypatch.setattr(C, "CONNECT_TIMEOUT", 2.0)
    address = f"tcp://127.0.0.1:{free_port()}"
    out = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "1000", "--dask", address])
    assert out.exit_code == 2, out.output
    assert "Invalid value for '--dask': could not reach a Dask scheduler at" in out.output and address in out.output


def test_dask_local_on_the_command_line_gives_the_local_results(tmp_path):
    _distributed()
    args = ["mc", "variance", "--dk", "1,8", "--samples", "3e4", "--seed", "3"]
    remote = CliRunner().invoke(main, [*args, "--dask", "local", "--json", str(tmp_path / "d.json")])
    assert remote.exit_code == 0, remote.output
    assert "Dask LocalCluster:" in remote.output and "dashboard http" in remote.output
    local = CliRunner().invoke(main, [*args, "--json", str(tmp_path / "l.json")])
    d, l = (json.loads((tmp_path / f).read_text()) for f in ("d.json", "l.json"))
    assert [p["result"]["accumulators"] for p in d["points"]] == [p["result"]["accumulators"] for p in l["points"]]
    assert d["points"][0]["result"]["executor"].startswith("dask ")
    assert CliRunner().invoke(main, [*args, "--dask", "local", "--workers", "2"]).exit_code == 2


# --------------------------------------------------------------------- without Dask, or without a cluster


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_futures_executors_give_the_local_bits(kind):
    s = SaturationSampler(8, n_keys=5)
    local = run_mc(s, 30_000, seed=7, block_size=512, workers=1)
    pool = ThreadPoolExecutor(3) if kind == "threads" else ProcessPoolExecutor(2)
    with pool:
        r = run_mc(s, 30_000, seed=7, block_size=512, executor=pool)
        rel = run_mc(DotSampler(8), 10**6, seed=2, rel_error=0.05, alpha=1e-3, block_size=500, executor=pool)
    assert fingerprint(r) == fingerprint(local) and r.workers == (3 if kind == "threads" else 2)
    rel_local = run_mc(DotSampler(8), 10**6, seed=2, rel_error=0.05, alpha=1e-3, block_size=500, workers=1)
    assert rel.stop_reason == "rel_error" and fingerprint(rel) == fingerprint(rel_local)


def test_executor_argument_errors():
    with pytest.raises(TypeError, match="executor must be a concurrent.futures.Executor or a distributed.Client, "
                                        "got object"):
        run_mc(DotSampler(4), 1000, seed=1, executor=object())
    with ThreadPoolExecutor(2) as pool:
        with pytest.raises(ValueError, match="workers=2 sets this process's threads, but executor= runs"):
            run_mc(DotSampler(4), 1000, seed=1, workers=2, executor=pool)


def test_without_dask_the_option_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    out = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--dask", "local"])
    assert out.exit_code == 2
    assert "Invalid value for '--dask'" in out.output and 'pip install "attnverify[dask]"' in out.output
    with pytest.raises(ImportError, match=r'pip install "attnverify\[dask\]"'):
        with C.open_client("local"):
            pass


def test_the_package_imports_and_runs_without_dask():
    code = ("import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
            "from verify.montecarlo import run_mc, DotSampler\nimport verify.cli.mc\n"
            "print(run_mc(DotSampler(2), 1000, seed=1, workers=2).samples)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "1000", out.stderr


def test_task_planning():
    # 10^10 samples of d_k = 64 (4096-sample blocks of 128 numbers): the largest tasks, a few thousand of them
    chunk, smallest = C.plan_chunk(n_blocks=-(-10**10 // 4096), block_elements=4096 * 128, threads=512)
    assert (chunk, smallest) == (C.TASK_MAX_BLOCKS, 32)
    # a small budget: one task per thread rather than tasks of TASK_MIN_ELEMENTS numbers
    assert C.plan_chunk(n_blocks=100, block_elements=4096 * 128, threads=4) == (25, 32)
    # a mid-size budget: about TASKS_PER_RUN tasks, none smaller than TASK_MIN_ELEMENTS numbers
    chunk, smallest = C.plan_chunk(n_blocks=100_000, block_elements=1024, threads=8)
    assert smallest == chunk == C.TASK_MAX_BLOCKS  # 2**14 blocks would make too large a result
    chunk, _ = C.plan_chunk(n_blocks=100_000, block_elements=2**20, threads=8)
    assert chunk == -(-100_000 // C.TASKS_PER_RUN)


def test_horizon_of_the_relative_error_rounds():
    kw = dict(rel_error=0.01, first=64, round_blocks=16, n_blocks=10_000)
    assert C.plan_horizon(0, merged=0, submitted=0, pending=0, rhw=None, **kw) == 64  # the first round
    # the interval projects 100 * (0.02 / 0.01)^2 * 1.05 = 420 blocks
    assert C.plan_horizon(64, merged=100, submitted=128, pending=2, rhw=0.02, **kw) == 400  # capped at 4x merged
    assert C.plan_horizon(64, merged=300, submitted=320, pending=2, rhw=0.015, **kw) == 709  # 300 * 2.25 * 1.05
    # everything sent was merged and the projection adds nothing (an estimate of 0: rhw inf): one more round
    assert C.plan_horizon(840, merged=840, submitted=840, pending=0, rhw=float("inf"), **kw) == 856
    # never past the budget, never backwards
    assert C.plan_horizon(9_990, merged=9_990, submitted=9_990, pending=0, rhw=0.5, **kw) == 10_000
    assert C.plan_horizon(840, merged=300, submitted=840, pending=5, rhw=0.005, **kw) == 840


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_a_terminal_ctrl_c_with_dask_local_saves_what_finished_and_leaves_no_process(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: the workers ignore it, the
    command cancels the cluster's tasks, writes the finished points, exits 130, and shuts the
    cluster down (no process of the group is left)."""
    _distributed()
    exe = os.path.join(os.path.dirname(sys.executable), "attnverify")
    out = tmp_path / "r.json"
    proc = subprocess.Popen([exe, "mc", "variance", "--dk", "1..64", "--samples", "1e7", "--seed", "1",
                             "--dask", "local", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        first = proc.stdout.readline()  # the cluster line, printed once the cluster is up
        assert b"Dask LocalCluster" in first, (first, proc.stderr.read() if proc.poll() is not None else b"")
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and b"Aborted!" not in stderr, stderr.decode()
    doc = json.loads(out.read_text())
    assert doc["incomplete"] is True and doc["points"]
    *whole, last = [p["result"]["samples"] for p in doc["points"]]
    assert all(n == 10**7 for n in whole) and 0 < last <= 10**7
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes outlived the command")
