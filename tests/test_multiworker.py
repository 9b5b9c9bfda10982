"""Two local worker processes (TF_CONFIG on 127.0.0.1, ports picked at runtime) train under
MultiWorkerMirroredStrategy (plain training and LOBSTER): only the chief writes, and a preempted
worker group resumes from its BackupAndRestore checkpoint.

Each worker is tests/_multiworker_worker.py; every launch is bounded by a timeout and the processes
are killed (by pid) if it expires.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from kerasprune import runs, training

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_multiworker_worker.py")
TIMEOUT = 240  # seconds for a whole launch of both workers


def _free_ports(n):
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module", autouse=True)
def _loopback_allowed():
    try:
        _free_ports(1)
    except OSError as exc:
        pytest.skip(f"this platform does not allow TCP sockets on 127.0.0.1 ({exc}); "
                    "multi-worker training needs them")


def _launch(kind, outs, epochs, crash_at=None):
    """Starts one worker per folder of ``outs`` (worker 0 is the chief); returns [(rc, output)]."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(len(outs))]}
    procs, logs = [], []
    for index, out in enumerate(outs):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(task))
        args = [sys.executable, WORKER, kind, str(out), str(epochs)]
        args += [str(crash_at)] if crash_at is not None else []
        # Output goes to files, not pipes: a worker blocked on a full pipe would stall the other
        # worker's collectives while we wait on the first one.
        log = tempfile.TemporaryFile("w+")
        logs.append(log)
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + TIMEOUT
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail(f"the worker group did not finish within {TIMEOUT} s:\n" +
                    "\n".join(_read(log)[-2000:] for log in logs))
    return [(proc.returncode, _read(log)) for proc, log in zip(procs, logs)]


def _read(log):
    log.seek(0)
    return log.read()


def _result(output):
    line = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert line, f"worker printed no result:\n{output[-3000:]}"
    return json.loads(line[-1][len("RESULT "):])


def _two_workers(kind, tmp_path, epochs):
    """Runs a group of two workers, each in its own folder (two machines' disks: whatever worker 1
    writes shows up in its folder), and checks both succeeded; returns both folders and results."""
    chief, worker = tmp_path / "w0", tmp_path / "w1"
    (rc0, out0), (rc1, out1) = _launch(kind, [chief, worker], epochs=epochs)
    assert rc0 == 0, out0[-3000:]
    assert rc1 == 0, out1[-3000:]
    return chief, worker, _result(out0), _result(out1)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_two_workers_train_and_only_the_chief_writes_results_logs_and_the_saved_model(tmp_path):
    chief, worker, r0, r1 = _two_workers("train", tmp_path, epochs=2)
    assert r0["chief"] and not r1["chief"]
    assert r0["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-6)  # one model, replicated
    files = _files(chief)
    for name in (runs.CONFIG, runs.METRICS, runs.HISTORY, runs.INITIAL_WEIGHTS, runs.BEST_WEIGHTS):
        assert name in files, (name, files)
    assert any(f.startswith(runs.TENSORBOARD + os.sep) for f in files)
    assert [int(r["epoch"]) for r in training.read_history(str(chief))] == [0, 1]
    saved_models = tmp_path / "saved_models"  # conftest's KERASPRUNE_SAVED_MODELS, shared by both
    exported = [os.path.dirname(f) for f in _files(saved_models) if f.endswith("saved_model.pb")]
    assert exported == [os.path.relpath(runs.export_path(str(chief)), str(saved_models))]
    assert _files(worker) == []


def test_two_workers_train_a_batchnorm_model_whose_weight_saves_need_every_worker(tmp_path):
    # Saving BatchNorm's sync-on-read statistics all-reduces them: a chief-only save of the initial
    # weights left the workers' collectives out of step ("Collective instance ... expected type").
    chief, worker, r0, r1 = _two_workers("train_bn", tmp_path, epochs=1)
    assert r0["test_loss"] == pytest.approx(r1["test_loss"], rel=1e-6)
    assert runs.INITIAL_WEIGHTS in _files(chief) and _files(worker) == []


def test_two_workers_prune_with_lobster_and_only_the_chief_writes(tmp_path):
    chief, worker, r0, r1 = _two_workers("lobster", tmp_path, epochs=3)
    assert r0["chief"] and not r1["chief"]
    # Both workers pruned at the same threshold and reached the same operating points.
    assert [r["point"] for r in r0["rows"]] == [r["point"] for r in r1["rows"]] == [0, 1]
    for a, b in zip(r0["rows"], r1["rows"]):
        assert a["pruned_params_pct"] == pytest.approx(b["pruned_params_pct"])
        assert a["threshold"] == pytest.approx(b["threshold"], rel=1e-6)
    assert r0["rows"][1]["pruned_params_pct"] > 0
    files = _files(chief)
    for name in (runs.CONFIG, runs.METRICS, runs.HISTORY, "operating_points.csv",
                 os.path.join("points", "point_000.weights.h5"), os.path.join("points", "point_001.weights.h5")):
        assert name in files, (name, files)
    assert _files(worker) == []


@pytest.mark.slow  # two launches of the group: about a minute of CPU
def test_a_preempted_worker_group_resumes_from_its_backup(tmp_path):
    out = tmp_path / "run"  # a folder both workers see, as a shared file system gives real clusters
    first = _launch("train", [out, out], epochs=4, crash_at=2)
    for rc, output in first:
        assert rc != 0 and "simulated preemption at the end of epoch 2" in output, output[-3000:]
    assert [int(r["epoch"]) for r in training.read_history(str(out))] == [0, 1]
    assert not (out / runs.METRICS).exists()
    second = _launch("train", [out, out], epochs=4)
    for rc, output in second:
        assert rc == 0, output[-3000:]
    # Epochs 0 and 1 came from the backup and were not trained again.
    assert [int(r["epoch"]) for r in training.read_history(str(out))] == [0, 1, 2, 3]
    assert runs.read_json(str(out / runs.METRICS))["epochs_completed"] == 4
    assert _result(second[0][1])["test_loss"] == pytest.approx(_result(second[1][1])["test_loss"], rel=1e-6)
    assert not [f for f in _files(out) if "workertemp" in f]  # worker 1's scratch copies are gone
