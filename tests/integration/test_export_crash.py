"""Crash safety of ``vitlens export``: real SIGKILL / SIGINT of real export processes, resume, torchrun.

* ``kill -9`` of a ``vitlens export`` subprocess after some batches are committed: the file
  opens, the committed rows equal an uninterrupted export, ``--resume`` completes it to
  exactly the uninterrupted result (the stale lock file of the killed process is no obstacle).
* a kill between writing a batch and committing it (``ExportWriter(before_commit=...)``,
  injected by :func:`inject_faults`): the batch is invisible and rewritten on resume.
* Ctrl-C (SIGINT): exit status 130, a valid file, resumable.
* torch.distributed (gloo, 2 processes): the merged view equals a single-process export.
* (slow) the real ``torchrun`` launcher, and kills at random moments in a loop.

Processes that only need to be killed are forked from the test process (torch is already
imported there, so they start in milliseconds); the CLI subprocess checks the real entry point.
Slow batches and crashes are injected by :func:`inject_faults` in the child process (the
shipped code reads no test switches from the environment).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vitlens
from vitlens.batch import ExportOptions, run_export

from .test_export import assert_same_export, make_inputs

OPTS = dict(batch_size=2, workers=0, analyses=["logits", "cls", "rollout", "distance"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo):
    tmp = tmp_path_factory.mktemp("crash")
    inputs = make_inputs(tmp / "in")
    ref = tmp / "reference.h5"
    model, cfg = demo
    run_export(model, cfg, inputs, ref, ExportOptions(**OPTS))
    return inputs, ref


def inject_faults(delay: float = 0.0, crash_after: int | None = None) -> None:
    """In a child process: sleep ``delay`` s after each exported batch; SIGKILL the process
    after batch ``crash_after + 1``'s data is written but before it is committed."""
    import vitlens.batch as batch
    from vitlens.export import hdf5

    if delay:
        real_batches = batch.image_batches

        def slow_batches(*args, **kwargs):
            for b in real_batches(*args, **kwargs):
                yield b
                time.sleep(delay)          # the previous batch is committed by now
        batch.image_batches = slow_batches
    if crash_after is not None:
        real_init = hdf5.ExportWriter.__init__
        left = [crash_after]

        def kill_before_commit(first: int, end: int) -> None:
            if left[0] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)
            left[0] -= 1

        def init(self, *args, **kwargs):
            real_init(self, *args, before_commit=kill_before_commit, **kwargs)
        hdf5.ExportWriter.__init__ = init


def committed(path: Path) -> int:
    if not path.exists():
        return 0
    try:  # read while the export writes (a snapshot); a read racing a flush may fail: try again
        with vitlens.export.read(path) as f:
            return f.rows
    except (vitlens.VitlensError, OSError, KeyError, RuntimeError):
        return 0


def wait_for_rows(path: Path, n: int, proc_alive, timeout: float = 120.0, describe=None) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rows = committed(path)
        if rows >= n:
            return rows
        if not proc_alive():
            raise AssertionError(f"the export ended before it was interrupted (with {rows} committed "
                                 f"rows visible)" + (f": {describe()}" if describe else ""))
        time.sleep(0.02)
    raise AssertionError(f"no {n} committed rows after {timeout} s")


def _ended(proc: subprocess.Popen) -> str:
    out, err = proc.communicate()
    return f"exit status {proc.returncode}; stdout {out.decode()[-1000:]!r}; stderr {err.decode()[-2000:]!r}"


def assert_prefix_of(ref: Path, out: Path, rows: int) -> None:
    with vitlens.export.read(ref) as fr, vitlens.export.read(out) as fo:
        assert fo.rows == rows and not fo.complete
        for k in fr.keys():
            a, b = fr[k][:rows], fo[k][:]
            if a.dtype.kind == "f":
                np.testing.assert_array_equal(a, b, err_msg=k)
            else:
                assert list(a) == list(b), k


def test_sigkill_of_cli_export_then_resume_equals_uninterrupted(setup, demo, tmp_path):
    inputs, ref = setup
    out = tmp_path / "killed.h5"
    code = ("import sys, vitlens\n"
            "assert 'h5py' not in sys.modules, 'import vitlens must not import h5py'\n"
            "assert 'read' in vitlens.export.__all__  # vitlens.export is there after import vitlens\n"
            "import time, vitlens.batch\n"            # inject_faults(delay=1.0), in the subprocess
            "real_batches = vitlens.batch.image_batches\n"
            "def slow_batches(*args, **kwargs):\n"
            "    for b in real_batches(*args, **kwargs):\n"
            "        yield b\n"
            "        time.sleep(1.0)\n"
            "vitlens.batch.image_batches = slow_batches\n"
            "from vitlens.cli.main import main\n"
            "main()\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # cwd: run from outside the checkout, where ./vitlens (which has no cli/) would shadow the installed package
    proc = subprocess.Popen([sys.executable, "-c", code, "export", str(inputs), str(out), "--model", "demo",
                             "--batch-size", "2", "--workers", "0", "--analyses", "logits,cls,rollout,distance",
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        wait_for_rows(out, 4, lambda: proc.poll() is None, describe=lambda: _ended(proc))
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    rows = committed(out)
    assert 4 <= rows < 9
    assert_prefix_of(ref, out, rows)                     # every committed batch intact
    with vitlens.export.read(out) as f:
        assert f.attrs["open_for_writing"]               # the writer died: resume rebuilds the file
    model, cfg = demo
    s = run_export(model, cfg, inputs, out, ExportOptions(**OPTS, resume=True))
    assert (s.resumed_from, s.rows) == (rows, 9)
    assert_same_export(ref, out)                         # no duplicate, no gap


def _child_export(inputs, out, faults, **opts):
    inject_faults(**faults)
    model, cfg = vitlens.load_model("demo", device="cpu")
    run_export(model, cfg, inputs, out, ExportOptions(**{**OPTS, **opts}))
    os._exit(0)


def test_kill_between_data_write_and_commit(setup, demo, tmp_path):
    """Killed after batch 2's data was flushed but before its commit: only batch 1 counts."""
    inputs, ref = setup
    out = tmp_path / "half.h5"
    p = mp.get_context("fork").Process(target=_child_export, args=(inputs, out, {"crash_after": 1}))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    with vitlens.export.read(out) as f:
        assert f.rows == 2
    import h5py

    with pytest.raises(OSError, match="open for write"):  # SWMR flags: plain readers are refused ...
        h5py.File(out, "r")
    with h5py.File(out, "r", swmr=True) as h:  # ... SWMR readers open it; batch 2 is past the commit point
        assert h["logits"].shape[0] == 4
        assert int(h.attrs["rows_committed"]) == 2
    assert_prefix_of(ref, out, 2)
    model, cfg = demo
    run_export(model, cfg, inputs, out, ExportOptions(**OPTS, resume=True))
    assert_same_export(ref, out)


def test_crashed_export_after_repair_opens_with_plain_h5py(setup, demo, tmp_path):
    """A killed export's file (SWMR flag left set) after `vitlens inspect --repair`: any HDF5
    reader opens it, the committed rows are intact, the half-written batch is gone, and
    --resume still completes it to the uninterrupted result."""
    import h5py

    from click.testing import CliRunner

    from vitlens.cli.main import cli

    def run_cli(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    inputs, ref = setup
    out = tmp_path / "crashed.h5"
    p = mp.get_context("fork").Process(target=_child_export, args=(inputs, out, {"crash_after": 1}))
    p.start()
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    with pytest.raises(OSError):
        h5py.File(out, "r")
    r = run_cli("inspect", out)
    assert "--repair" in r.stdout               # the summary says how to make it readable
    r = run_cli("inspect", out, "--repair")
    assert r.exit_code == 0, r.stderr
    assert "repaired" in r.stderr and "2 committed row(s) kept" in r.stderr
    with h5py.File(out, "r") as h:              # plain open: no swmr=True, default locking
        assert h["logits"].shape[0] == 2 and int(h.attrs["rows_committed"]) == 2
        assert not bool(h.attrs["open_for_writing"])
        with h5py.File(ref, "r") as hr:
            for k in ("logits", "rollout", "cls_attention", "attention_distance"):
                np.testing.assert_array_equal(h[k][:], hr[k][:2], err_msg=k)
            assert list(h["images/path"].asstr()[:]) == list(hr["images/path"].asstr()[:2])
    assert_prefix_of(ref, out, 2)
    assert "nothing to repair" in run_cli("inspect", out, "--repair").stderr
    model, cfg = demo
    run_export(model, cfg, inputs, out, ExportOptions(**OPTS, resume=True))
    assert_same_export(ref, out)


def _child_cli(args, faults):
    inject_faults(**faults)
    from vitlens.cli.main import cli

    try:
        cli(args, prog_name="vitlens")
    except SystemExit as e:
        os._exit(e.code if isinstance(e.code, int) else 1)
    os._exit(0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_closes_the_file_cleanly(setup, demo, tmp_path, sig):
    inputs, ref = setup
    out = tmp_path / "interrupted.h5"
    args = ["export", str(inputs), str(out), "--model", "demo", "--batch-size", "2", "--workers", "0",
            "--analyses", "logits,cls,rollout,distance", "--quiet"]
    p = mp.get_context("fork").Process(target=_child_cli, args=(args, {"delay": 1.0}))
    p.start()
    try:
        wait_for_rows(out, 2, p.is_alive)
    finally:
        os.kill(p.pid, sig)
        p.join(60)
    assert p.exitcode == 130
    rows = committed(out)
    assert 2 <= rows < 9
    assert not Path(str(out) + ".lock").exists()         # closed cleanly, lock released and removed
    assert_prefix_of(ref, out, rows)
    with vitlens.export.read(out) as f:
        assert not f.attrs["open_for_writing"]           # a clean close: resume continues in place
    model, cfg = demo
    run_export(model, cfg, inputs, out, ExportOptions(**OPTS, resume=True))
    assert_same_export(ref, out)


# -------------------------------------------------------------------------- torchrun
def _rank(rank: int, world: int, store: str, inputs, out, opts) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, cfg = vitlens.load_model("demo", device="cpu")
        run_export(model, cfg, inputs, out, ExportOptions(**opts))
    finally:
        dist.destroy_process_group()
    os._exit(0)


def test_two_process_gloo_export_equals_single_process(setup, tmp_path):
    inputs, ref = setup
    out = tmp_path / "dist.h5"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(r, 2, str(tmp_path / "store"), inputs, out, OPTS)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    shards = [tmp_path / "dist.rank0.h5", tmp_path / "dist.rank1.h5"]
    with vitlens.export.read(shards[0]) as a, vitlens.export.read(shards[1]) as b:
        assert (a.rows, b.rows) == (4, 5)                   # contiguous shards [0, 4), [4, 9)
        assert a.attrs["shard_offset"] == 0 and b.attrs["shard_offset"] == 4
    import h5py

    with h5py.File(out) as h:  # self-contained by default: the rows are copied, no virtual dataset
        assert not h["rollout"].is_virtual and not h["images/path"].is_virtual
        assert "shards" not in h.attrs and list(h.attrs["merged_from"]) == [s.name for s in shards]
    assert_same_export(ref, out)
    # moved alone, without its shards, it still holds everything
    alone = tmp_path / "alone"
    alone.mkdir()
    out.rename(alone / out.name)
    assert_same_export(ref, alone / out.name)


@pytest.mark.slow
def test_torchrun_launcher_two_processes(setup, tmp_path):
    inputs, ref = setup
    out = tmp_path / "tr.h5"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else "torchrun", "--nproc_per_node=2",
           f"--master_port={29500 + random.randrange(400)}", "-m", "vitlens.cli", "export", str(inputs), str(out),
           "--model", "demo", "--batch-size", "2", "--workers", "0", "--analyses", "logits,cls,rollout,distance"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600,
                       cwd=tmp_path)
    # one input is corrupt: rank 0 reports for every rank and exits 3 (torchrun then exits non-zero)
    assert "8 ok, 1 failed" in r.stderr, r.stderr[-3000:]
    assert_same_export(ref, out)


@pytest.mark.slow
def test_random_kills_never_lose_committed_batches(setup, demo, tmp_path):
    inputs, ref = setup
    model, cfg = demo
    rng = random.Random(0)
    for trial in range(25):
        out = tmp_path / f"rand{trial}.h5"
        p = mp.get_context("fork").Process(target=_child_export, args=(inputs, out, {}), kwargs={"batch_size": 1})
        p.start()
        time.sleep(rng.uniform(0.0, 1.5))
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        rows = committed(out)
        if out.exists():
            with vitlens.export.read(out) as f:
                ok_rows = f.rows
            assert ok_rows == rows
        run_export(model, cfg, inputs, out, ExportOptions(**{**OPTS, "batch_size": 1}, resume=True))
        with vitlens.export.read(out) as f, vitlens.export.read(ref) as fr:
            for k in fr.keys():
                a, b = fr[k][:], f[k][:]
                if a.dtype.kind == "f":
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)  # batch size 1 vs 2
                else:
                    assert list(a) == list(b), k


def test_old_format_file_reads_and_resumes(setup, demo, tmp_path, monkeypatch):
    """Files of vitlens before SWMR writing (superblock 0, v1 B-tree chunk index) still read and resume."""
    import h5py

    from vitlens.export.hdf5 import writer

    inputs, ref = setup
    out = tmp_path / "old.h5"
    model, cfg = demo
    monkeypatch.setattr(writer, "LIBVER", ("earliest", "latest"))   # the format earlier versions wrote
    run_export(model, cfg, inputs, out, ExportOptions(**OPTS, limit=4))
    with h5py.File(out, "r") as h:
        assert h.id.get_create_plist().get_version()[0] == 0
    with h5py.File(out, "r+") as h:  # as an old writer's kill leaves it (no SWMR flags; plain h5py opens it)
        h.attrs["open_for_writing"] = np.bool_(True)
    monkeypatch.undo()
    with vitlens.export.read(out) as f:
        assert f.rows == 4
    s = run_export(model, cfg, inputs, out, ExportOptions(**OPTS, resume=True, limit=4))
    assert s.resumed_from == 4
    with vitlens.export.read(out) as f, vitlens.export.read(ref) as fr:   # rebuilt in the new format
        assert f.rows == 4 and f._f.id.get_create_plist().get_version()[0] >= 3
        np.testing.assert_array_equal(f["rollout"][:], fr["rollout"][:4])


def test_writer_uses_swmr_and_a_running_export_reads(setup, demo, tmp_path):
    """New files: version-3 superblock, SWMR writing; vitlens.export.read opens them while written and after a kill."""
    import h5py

    inputs, ref = setup
    out = tmp_path / "swmr.h5"
    p = mp.get_context("fork").Process(target=_child_export, args=(inputs, out, {"delay": 0.5}))
    p.start()
    try:
        wait_for_rows(out, 2, p.is_alive)
        with vitlens.export.read(out) as f:     # while the writer runs
            assert f._f.swmr_mode and f.rows >= 2
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    rows = committed(out)
    assert_prefix_of(ref, out, rows)
    with h5py.File(out, "r", swmr=True) as h:
        assert h.id.get_create_plist().get_version()[0] >= 3
