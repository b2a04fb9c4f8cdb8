"""Unit tests of the worker launchers: the exact command lines, job scripts and messages each
scheduler gets for a given ``workers`` config. No scheduler runs here (LSF does not exist on
this machine); the Slurm launcher runs for real in tests/test_cluster.py."""

from __future__ import annotations

import os
import pickle
import shlex
import sys
from pathlib import Path

import pytest

from marlseg.config import Config, WorkersConfig, load_config
from marlseg.errors import ConfigError, MarlsegError
from marlseg.launchers import (
    LocalLauncher,
    LsfLauncher,
    SlurmLauncher,
    SubmitFailed,
    check_workers,
    make_launcher,
    worker_command,
)


def _workers(**kw) -> WorkersConfig:
    return WorkersConfig.model_validate(kw)


def _lsf(tmp_path: Path, name: str = "fragments", **kw) -> LsfLauncher:
    return LsfLauncher(
        "fragments",
        tmp_path / "cfg.json",
        tmp_path / "logs" / name,
        _workers(type="lsf", **kw),
        name,
        tag="t0",
    )


def _slurm(tmp_path: Path, name: str = "fragments", stage: str = "fragments", **kw):
    return SlurmLauncher(
        stage,
        tmp_path / "cfg.json",
        tmp_path / "logs" / name,
        _workers(type="slurm", **kw),
        name,
        tag="t0",
    )


# --- LSF --------------------------------------------------------------------------------
def test_bsub_command_full(tmp_path):
    la = _lsf(
        tmp_path,
        queue="long",
        cpus=4,
        mem_mb=16000,
        gpus=1,
        time_limit="01:29:30",
        account="proj42",
        extra_flags=["-R", "select[gpu_model==A100]"],
    )
    log = tmp_path / "logs/fragments/worker_3.log"
    assert la.submit_command(log) == [
        "bsub", "-K", "-J", "marlseg-fragments-t0", "-o", str(log), "-e", str(log),
        "-env", "all", "-q", "long", "-n", "4", "-M", "16000MB",
        "-R", "rusage[mem=16000MB] span[hosts=1]", "-gpu", "num=1", "-W", "90",
        "-P", "proj42", "-R", "select[gpu_model==A100]",
        "/bin/sh", str(tmp_path / "logs/fragments/worker.sh"),
    ]  # fmt: skip


def test_bsub_command_minimal(tmp_path):
    la = _lsf(tmp_path)
    log = tmp_path / "w.log"
    assert la.submit_command(log) == [
        "bsub", "-K", "-J", "marlseg-fragments-t0", "-o", str(log), "-e", str(log),
        "-env", "all", "-n", "1", "/bin/sh", str(la.script_path),
    ]  # fmt: skip


def test_bsub_predict_gets_one_gpu_by_default(tmp_path):
    la = _lsf(tmp_path, name="predict")
    assert la.submit_command(tmp_path / "w.log")[-4:-2] == ["-gpu", "num=1"]
    la = _lsf(tmp_path, name="predict", gpus=0)
    assert "-gpu" not in la.submit_command(tmp_path / "w.log")


def test_lsf_time_limit_rounds_up_to_minutes(tmp_path):
    for value, minutes in [("90", "90"), ("00:00:01", "1"), ("2-00:00:00", "2880")]:
        cmd = _lsf(tmp_path, time_limit=value).submit_command(tmp_path / "w.log")
        assert cmd[cmd.index("-W") + 1] == minutes


def test_lsf_script_and_cancel(tmp_path):
    la = _lsf(tmp_path)
    cfg = tmp_path / "cfg.json"
    assert la.script() == (
        "#!/bin/sh\n"
        "# marlseg worker job for stage fragments (job name marlseg-fragments-t0); "
        "written by marlseg.launchers\n"
        'echo "marlseg: fragments worker, lsf job ${LSB_JOBID} on $(hostname), '
        'started $(date +%Y-%m-%dT%H:%M:%S)"\n'
        f"cd {shlex.quote(os.getcwd())} || exit 1\n"
        f"exec {shlex.quote(sys.executable)} -m marlseg.worker fragments {shlex.quote(str(cfg))}\n"
    )
    assert la.cancel_command("123") == ["bkill", "123"]
    assert la.cancel_all_command() == ["bkill", "-J", "marlseg-fragments-t0", "0"]
    assert la.active_jobs_command() == [
        "bjobs", "-J", "marlseg-fragments-t0", "-noheader", "-o", "jobid",
    ]  # fmt: skip


def test_lsf_reads_bsub_output(tmp_path):
    la = _lsf(tmp_path)
    log = tmp_path / "w.log"
    submitted = ["Job <4711> is submitted to queue <long>.", "<<Waiting for dispatch ...>>"]
    assert la.parse_job_id(submitted[0]) == "4711"
    assert la.parse_job_id("<<Starting on node7>>") is None
    assert la.is_pending(submitted)
    assert not la.is_pending([*submitted, "<<Starting on node7>>"])
    assert la.submit_failure(submitted, log) is None  # submitted: later failures are the job's
    assert (
        la.submit_failure(["nosuch: No such queue. Job not submitted."], log)
        == "nosuch: No such queue. Job not submitted."
    )


# --- Slurm ------------------------------------------------------------------------------
def test_srun_command_full(tmp_path):
    la = _slurm(
        tmp_path,
        partition="gpu",
        cpus=8,
        mem_mb=32000,
        gpus=2,
        time_limit="1-02:03:04",
        account="lab",
        extra_flags=["--qos=high", "--constraint=a100"],
    )
    log = tmp_path / "logs/fragments/worker_0.log"
    assert la.submit_command(log) == [
        "srun", "--job-name=marlseg-fragments-t0", f"--output={log}", "--open-mode=append",
        "--export=ALL", "--nodes=1", "--ntasks=1", "--cpus-per-task=8", "--mem=32000M",
        "--gpus=2", "--time=1-02:03:04", "--partition=gpu", "--account=lab",
        "--qos=high", "--constraint=a100", "/bin/sh", str(la.script_path),
    ]  # fmt: skip


def test_srun_command_minimal_and_time_formats(tmp_path):
    la = _slurm(tmp_path)
    log = tmp_path / "w.log"
    assert la.submit_command(log) == [
        "srun", "--job-name=marlseg-fragments-t0", f"--output={log}", "--open-mode=append",
        "--export=ALL", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
        "/bin/sh", str(la.script_path),
    ]  # fmt: skip
    for value, slurm in [("90", "01:30:00"), ("36:00:00", "1-12:00:00"), ("00:05:00", "00:05:00")]:
        assert f"--time={slurm}" in _slurm(tmp_path, time_limit=value).submit_command(log)


def test_srun_gpu_default_only_for_gpu_stages(tmp_path):
    assert "--gpus=1" in _slurm(tmp_path, name="predict").submit_command(tmp_path / "w")
    assert not any(a.startswith("--gpus") for a in _slurm(tmp_path).submit_command(tmp_path / "w"))
    assert WorkersConfig().gpus_for("predict") == 0  # local workers request nothing


def test_slurm_cancel_and_output_parsing(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    la = _slurm(tmp_path)
    assert la.cancel_command("17") == ["scancel", "17"]
    assert la.cancel_all_command() == ["scancel", "--name=marlseg-fragments-t0", "--user=alice"]
    assert la.active_jobs_command() == [
        "squeue", "--noheader", "--name=marlseg-fragments-t0", "--format=%i",
    ]  # fmt: skip
    queued = ["srun: job 17 queued and waiting for resources"]
    assert la.parse_job_id(queued[0]) == "17"
    assert la.is_pending(queued)
    assert not la.is_pending([*queued, "srun: job 17 has been allocated resources"])
    log = tmp_path / "w.log"
    lines = [
        "srun: error: invalid partition specified: nosuch",
        "srun: error: Unable to allocate resources: Invalid partition name specified",
    ]
    assert la.submit_failure(lines, log) == "invalid partition specified: nosuch"
    # a job whose script ran (header in its log) failed on its own, not at submission
    log.write_text("marlseg: fragments worker, slurm job 17 on n1, started 2026-01-01T00:00:00\n")
    assert la.submit_failure(["srun: error: n1: task 0: Exited with exit code 1"], log) is None


def test_slurm_env_inside_an_allocation(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1000")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    monkeypatch.setenv("DAISY_CONTEXT", "ctx")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = _slurm(tmp_path, cpus=3).job_env(tmp_path / "w.log")
    assert "SLURM_JOB_ID" not in env and "SLURM_MEM_PER_NODE" not in env
    assert env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert env["DAISY_CONTEXT"] == "ctx"
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["MARLSEG_WORKER_LOG"] == str(tmp_path / "w.log")


def test_slurm_env_outside_an_allocation_keeps_user_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    monkeypatch.setenv("SLURM_ACCOUNT", "lab")
    assert _slurm(tmp_path).job_env(tmp_path / "w.log")["SLURM_ACCOUNT"] == "lab"


def test_plugin_stage_module_reaches_the_worker(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    import marlseg
    import marlseg.stages

    root = str(Path(marlseg.__file__).resolve().parents[1])
    for stage in ("marlseg.launchers:SlurmLauncher", "marlseg.stages:STAGES"):
        env = _slurm(tmp_path, stage=stage).job_env(tmp_path / "w.log")
        assert env["PYTHONPATH"].split(os.pathsep)[0] == root
    assert "PYTHONPATH" not in _slurm(tmp_path, stage="fragments").job_env(tmp_path / "w.log")


# --- config and errors ------------------------------------------------------------------
def test_time_limit_is_validated():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["workers.time_limit=1:30"])
    assert str(e.value) == (
        "workers.time_limit: expected minutes, HH:MM:SS or D-HH:MM:SS, got '1:30'"
    )
    with pytest.raises(ConfigError, match=r"^fragments\.workers\.time_limit: "):
        load_config(None, ['fragments.workers={"time_limit": "soon"}'])
    assert load_config(None, ["workers.time_limit=120"]).workers.time_limit_minutes() == 120


def test_per_stage_override_merges_and_resolves_gpus():
    config = Config.model_validate(
        {
            "workers": {"type": "slurm", "partition": "cpu", "num_workers": 8},
            "predict": {"workers": {"partition": "gpu", "num_workers": 2}},
        }
    )
    predict = config.workers_for("predict")
    assert (predict.partition, predict.num_workers, predict.gpus_for("predict")) == ("gpu", 2, 1)
    fragments = config.workers_for("fragments")
    assert (fragments.partition, fragments.gpus_for("fragments")) == ("cpu", 0)


def test_missing_submit_command_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no bsub here
    with pytest.raises(SubmitFailed) as e:
        check_workers("fragments", _workers(type="lsf"))
    line = e.value.line()
    assert isinstance(e.value, MarlsegError) and "\n" not in line
    assert line.startswith("fragments.workers: bsub failed: bsub not found on PATH")
    with pytest.raises(SubmitFailed, match="srun not found on PATH"):
        make_launcher("toy", _workers(type="slurm"), tmp_path / "c.json", tmp_path / "logs/toy")
    check_workers("fragments", _workers(type="local"))  # nothing to check


def test_submit_error_is_reported_only_for_this_run_and_when_nothing_started(tmp_path):
    la = _slurm(tmp_path)
    la.log_dir.mkdir(parents=True)
    assert la.submit_error() is None
    la._record_submit_error("srun failed: invalid partition specified: nosuch")
    assert la.submit_error().line() == (
        "fragments.workers: srun failed: invalid partition specified: nosuch"
    )
    other_run = _slurm(tmp_path)
    other_run.tag = "t1"
    assert other_run.submit_error() is None
    la._touch(la._started_file)  # some job of this run did start: not a submission problem
    assert la.submit_error() is None


def test_launchers_pickle_and_local_default(tmp_path):
    la = make_launcher("toy", WorkersConfig(), tmp_path / "c.json", tmp_path / "logs" / "toy")
    assert isinstance(la, LocalLauncher) and la.name == "toy"
    for obj in (la, _slurm(tmp_path), _lsf(tmp_path)):
        assert pickle.loads(pickle.dumps(obj)) == obj
    assert worker_command("toy", Path("c.json"))[1:] == ["-m", "marlseg.worker", "toy", "c.json"]
