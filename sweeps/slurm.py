"""A study's workers as one SLURM job array, through submitit:

    python -m sweeps.run balanced --size full --slurm --array 8 --storage postgresql://user@db-host/optuna \
        --slurm-param partition=gpu --slurm-param timeout_min=2880

Each array task is one worker (`sweeps.run._worker`) on the GPU SLURM gives it. The job settings are the Hydra
multirun's (experiments/hydra/launcher/slurm.yaml: partition, account, timeout_min, gpus_per_node, cpus_per_task,
mem_gb, array_parallelism), so both SLURM paths ask for the same resources; `--slurm-param key=value` changes one.
All tasks share one Optuna storage, which must be a database server: its heartbeats fail the trial of a task
that was preempted or killed, and Optuna queues it again, so another task (or the requeued one) runs it,
resuming from the dead trial's last checkpoint. The tasks log to the MLFLOW_TRACKING_URI of the submitting shell
(SLURM exports its environment to the jobs), under the study's parent run; the tasks' own logs go to
<paths.output_root>/sweeps/<study>_<stamp>/slurm/<job id>/, beside the trials' folders. The command waits for
the array and prints the study's summary; jobs keep running if it is interrupted, and running it again submits
tasks for the trials still missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from common.config import CONFIG_DIR
from sweeps.study import StudySpec

LAUNCHER_FILE = CONFIG_DIR / "hydra" / "launcher" / "slurm.yaml"
# slurm.yaml's names -> submitit's AutoExecutor parameters (the Hydra launcher makes the same translation)
EXECUTOR_NAMES = {
    "partition": "slurm_partition",
    "account": "slurm_account",
    "timeout_min": "timeout_min",
    "nodes": "nodes",
    "tasks_per_node": "tasks_per_node",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "array_parallelism": "slurm_array_parallelism",
}


def job_settings(changes: list[str]) -> dict[str, Any]:
    """slurm.yaml's settings with `key=value` changes, as submitit executor parameters (None values dropped)."""
    settings = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(LAUNCHER_FILE)).items() if k in EXECUTOR_NAMES}
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep or key not in EXECUTOR_NAMES:
            raise ValueError(f"--slurm-param {change!r}: give key=value with key one of {sorted(EXECUTOR_NAMES)}")
        settings[key] = yaml.safe_load(value)
    if settings.get("tasks_per_node", 1) != 1 or settings.get("nodes", 1) != 1:
        raise ValueError("--slurm: each array task is one worker; keep nodes=1 and tasks_per_node=1")
    return {EXECUTOR_NAMES[k]: v for k, v in settings.items() if v is not None}


def check_storage(url: str) -> None:
    from sweeps.run import is_local

    if is_local(url):
        raise ValueError(
            f"--slurm: storage {url} is a local file; the array's tasks run on other hosts and need a database "
            "server every node reaches (--storage postgresql://user@host/db; `make postgres` starts one)"
        )


def run_array(
    spec: StudySpec,
    study_file: str,
    size: str,
    storage_url: str | None,
    logger: str,
    sampler: str | None,
    tasks: int,
    changes: list[str],
) -> dict[str, Any]:
    """Submit `tasks` workers as one array, wait for them, return the study's summary (as run_study does)."""
    import submitit

    from sweeps.run import open_study, parent_run_id, study_output_root, summarize, this_run, trial_root

    if not storage_url:
        raise ValueError("--slurm needs --storage: a database server every node reaches (postgresql://...)")
    check_storage(storage_url)
    settings = job_settings(changes)
    if logger == "mlflow":
        from common.tracking import ensure_store

        ensure_store()
    study = open_study(spec, storage_url)
    first_new = len(study.get_trials(deepcopy=False))
    parent = parent_run_id(study, spec, size) if logger == "mlflow" else None
    logs = Path(study_output_root(spec, size)) / trial_root(study) / "slurm" / "%j"  # beside its trials' folders
    missing = spec.n_trials - len(study.get_trials(deepcopy=False, states=_counted()))
    if missing <= 0:
        print(f"study {spec.name!r}: all {spec.n_trials} trials are done; nothing submitted")
        return {**summarize(study, spec, parent), "this_run": this_run(study, first_new)}
    tasks = min(tasks, missing)
    executor = submitit.AutoExecutor(folder=logs, cluster="slurm")
    executor.update_parameters(name=f"sweep-{spec.name}", **settings)
    # every task may run all the missing trials; MaxTrialsCallback stops them all at the study's total, so a
    # task that dies early leaves its share to the others instead of leaving the study short
    jobs = executor.map_array(
        array_task, *zip(*[(study_file, size, storage_url, parent, logger, missing, sampler)] * tasks)
    )
    print(f"study {spec.name!r}: {missing} trial(s) to run, SLURM array {jobs[0].job_id.split('_')[0]} of {tasks} "
          f"task(s), storage {storage_url}; logs in {executor.folder}")  # fmt: skip
    failed = [job for job in jobs if _failed(job)]
    if failed:
        print(f"warning: {len(failed)} array task(s) failed, e.g. {failed[0].job_id}: see {failed[0].paths.stderr}")
    study = open_study(spec, storage_url)
    return {**summarize(study, spec, parent), "this_run": this_run(study, first_new)}


def _counted():
    from sweeps.run import _counted_states

    return _counted_states()


def _failed(job) -> bool:
    """Waits for the task; True when it raised or SLURM ended it."""
    try:
        job.result()
        return False
    except Exception as err:  # submitit re-raises the task's error, or reports a job SLURM ended (UncompletedJobError)
        print(f"array task {job.job_id}: {type(err).__name__}: {str(err).strip().splitlines()[-1:]}", file=sys.stderr)
        return True


def array_task(study_file, size, storage_url, parent, logger, quota, sampler) -> None:
    """One array task: one worker on the GPU SLURM allocated (CUDA_VISIBLE_DEVICES is SLURM's)."""
    from sweeps.run import _worker

    _worker(study_file, size, storage_url, parent, logger, quota, sampler, 1, None)
