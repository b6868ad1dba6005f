"""Run an Optuna study: each trial composes the phase's Hydra config plus its parameters and calls
`train(cfg)`; every trial is an MLflow run nested under the study's parent run.

    python -m sweeps.run balanced                     # sweeps/studies/balanced.yaml at demo size
    python -m sweeps.run balanced --size full --workers 4
    python -m sweeps.run balanced --storage postgresql://user@host/optuna   # many machines, one study
    python -m sweeps.run balanced --size full --gpus 0,1 --workers-per-gpu 2     # 4 workers, 2 per GPU
    python -m sweeps.run balanced --size full --slurm --array 8 --storage postgresql://...   # 8 SLURM tasks

GPUs: worker i runs on GPU i mod G of the G GPUs in --gpus (default: CUDA_VISIBLE_DEVICES, else every GPU
torch sees), set as its CUDA_VISIBLE_DEVICES before CUDA starts in it; --workers defaults to G x
--workers-per-gpu (1 without GPUs). Each trial's MLflow run is tagged with its GPU (`gpu`, or `cpu`).

Storage: SQLite (optuna.db at the repo root) for one process; a journal file for `--workers N` local processes
(SQLite was measured failing with "database is locked" at 16 writers); any SQLAlchemy URL for many machines,
with heartbeats so a dead worker's trial is failed and retried. Running the same command again continues
the study: finished trials are not repeated, the trial count is a total across runs, and trials left RUNNING
by a dead local process are marked failed and their parameters queued again. A local storage belongs to one
runner at a time (a second one is refused), since that clean-up would fail a live runner's trials.
Exit status: 1 when every trial this run started failed (with the first error), else 0 with the failed count.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Any

from common import REPO_ROOT
from common.config import positive_int, run_guarded
from sweeps.study import StudySpec, load_study

PARENT_RUN_ATTR = "mlflow_parent_run_id"
TRIAL_ROOT_ATTR = "trial_root"  # the trials' folders, under paths.output_root


def _counted_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


# --------------------------------------------------------------------------------------------- storage
def default_storage(spec: StudySpec, workers: int) -> str:
    if workers > 1:
        return f"journal:{REPO_ROOT / 'sweeps' / f'{spec.name}.journal.log'}"
    return f"sqlite:///{REPO_ROOT / 'optuna.db'}"


def open_storage(url: str):
    """`journal:<path>` -> JournalStorage on a file; local SQLite -> RDBStorage; any other URL -> RDBStorage
    with heartbeats, whose stale trials are failed and retried (RetryFailedTrialCallback)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        check_local_storage(url)
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:"):
        from common.sqlite_lock import creation_lock

        check_local_storage(url)

        with creation_lock(url):  # a new storage's schema is written by one process at a time
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return RDBStorage(
            url,
            heartbeat_interval=30,
            grace_period=120,
            heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=3),
        )
    except SQLAlchemyError as err:  # a server that is down, a wrong password: SQLAlchemy's page-long message
        raise ValueError(f"Optuna storage {url} cannot be opened ({database_error_line(err)})") from None
    except ImportError as err:  # mysql://, oracle://: a driver this project does not install
        raise ValueError(f"Optuna storage {url} needs a database driver that is not installed ({err})") from None


def database_error_line(err: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy wraps it in a page of its own text)."""
    return str(getattr(err, "orig", None) or err).strip().splitlines()[0][:200]


def check_local_storage(url: str) -> None:
    """A folder, or a non-SQLite file, named as the storage: one line, before any lock file is made beside it."""
    from common.sqlite_lock import sqlite_file_problem

    problem = sqlite_file_problem(Path(url.removeprefix("sqlite:///"))) if url.startswith("sqlite:") else None
    if problem:
        raise ValueError(f"Optuna storage {url} {problem}: move it aside, or give another --storage")
    if url.startswith("journal:") and Path(url.removeprefix("journal:")).is_dir():
        path = Path(url.removeprefix("journal:"))
        raise ValueError(f"Optuna storage {url} is a folder: name the journal file, e.g. {path / 'study.log'}")


def is_local(url: str) -> bool:
    """Local storages are only used by this runner's own processes, so RUNNING trials at start are stale."""
    return url.startswith(("journal:", "sqlite:"))


# --------------------------------------------------------------------------------------------- GPUs
def visible_gpus() -> list[str]:
    """The GPUs this process may use, by the ids its workers' CUDA_VISIBLE_DEVICES take ([] without GPUs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(text: str | None) -> list[str]:
    """`--gpus 0,2,3` -> ['0', '2', '3']; None -> the visible GPUs."""
    if text is None:
        return visible_gpus()
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus {text!r}: give distinct GPU ids separated by commas, e.g. --gpus 0,2,3")
    if not visible_gpus():  # the workers still get CUDA_VISIBLE_DEVICES, but their trials will find no GPU
        print(f"note: --gpus {text}, but this machine shows no CUDA device: trials with device=auto run on the CPU")
    return gpus


def place_workers(gpus: list[str], workers: int | None, workers_per_gpu: int = 1) -> list[str | None]:
    """Worker i's GPU: gpus[i mod G]; None (the CPU) for every worker when there are no GPUs."""
    if workers_per_gpu < 1:
        raise ValueError(f"--workers-per-gpu {workers_per_gpu} must be >= 1")
    if workers is None:
        workers = workers_per_gpu * len(gpus) if gpus else 1
    if workers < 1:
        raise ValueError(f"--workers {workers} must be >= 1")
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def use_gpu(gpu: str | None) -> None:
    """Make `gpu` this process's only CUDA device; CUDA must not have started here yet."""
    if gpu is None:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise ValueError(f"cannot place this sweep on GPU {gpu}: CUDA already started in this process")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu


# --------------------------------------------------------------------------------------------- the study
def _sampler(spec: StudySpec):
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def _pruner(spec: StudySpec):
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2)  # the warm-up counts evaluations: see report()
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, storage_url: str):
    import optuna

    return optuna.create_study(
        study_name=spec.name,
        storage=open_storage(storage_url),
        sampler=_sampler(spec),
        pruner=_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )


def requeue_stale_trials(study) -> list[int]:
    """Mark trials left RUNNING (by a process that died) as failed and queue their parameters again; returns
    their numbers."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        requeue(study, trial.params, trial.system_attrs, trial.number)
    return [trial.number for trial in stale]


def _trial_filter(spec: StudySpec, number: int) -> str:
    return f"tags.optuna_study = '{spec.name}' and tags.optuna_trial = '{number}'"


def fail_tracking_runs(spec: StudySpec, numbers: list[int]) -> None:
    """The MLflow runs of trials whose worker died end FAILED, not RUNNING forever."""
    from common.tracking import Store

    store = Store()
    for number in numbers:
        for run_id in store.run_ids(spec.phase, _trial_filter(spec, number)):
            store.set_tags(run_id, {"optuna_state": "FAIL"})
            store.set_status(run_id, "FAILED")


def requeue(study, params: dict, system_attrs: dict, retry_of: int) -> None:
    """Queue `params` again as a new trial of the study."""
    from optuna.trial import TrialState

    params = _grid_point(study, system_attrs) or params  # all of a grid point, also if killed mid-suggest
    if not params:  # killed before it chose any: the sampler draws for the next trial as for any other
        return
    study.enqueue_trial(params, user_attrs={"retry_of": retry_of}, skip_if_exists=False)
    # GridSampler does not give queued trials a grid point of their own; carry the old trial's over, or the
    # sampler cannot tell which point the retry covers.
    retry = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[-1]
    for key in ("grid_id", "search_space"):
        if key in system_attrs:
            study._storage.set_trial_system_attr(retry._trial_id, key, system_attrs[key])


def _grid_point(study, system_attrs: dict) -> dict:
    """The parameters of a grid trial killed before it suggested them, from the grid point it was given:
    without them the point would count as visited (failed) and never run."""
    from optuna.samplers import GridSampler

    if not isinstance(study.sampler, GridSampler) or "grid_id" not in system_attrs:
        return {}
    sampler = study.sampler
    return dict(zip(sampler._param_names, sampler._all_grids[system_attrs["grid_id"]]))


def parent_run_id(study, spec: StudySpec, size: str) -> str | None:
    """The MLflow run that holds the study, created once and kept in the study's user attributes, so a rerun
    nests its trials under the same parent."""
    from common.tracking import MLflowLogger

    existing = study.user_attrs.get(PARENT_RUN_ATTR)
    if existing:
        return existing
    parent = MLflowLogger(
        experiment=spec.phase,
        run_name=f"study:{spec.name}",
        tags={"optuna_study": spec.name, "optuna_size": size, "kind": "study"},
    )
    parent.log_params(
        {
            "study": {
                "name": spec.name,
                "sampler": spec.sampler,
                "pruner": spec.pruner,
                "n_trials": spec.n_trials,
                "objective": spec.objective,
                "search_space": str(spec.search_space),
            }
        }
    )
    study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    return parent.run_id


def trial_root(study) -> str:
    """The folder of the study's trial folders, relative to paths.output_root: chosen once and kept in the
    study's user attributes, so every worker, host and rerun writes (and resumes) in the same place, and a new
    study of the same name never meets an old one's checkpoints."""
    from common.config import run_stamp

    existing = study.user_attrs.get(TRIAL_ROOT_ATTR)
    if existing:
        return existing
    study.set_user_attr(TRIAL_ROOT_ATTR, f"sweeps/{study.study_name}_{run_stamp()}")
    return study.user_attrs[TRIAL_ROOT_ATTR]


def study_output_root(spec: StudySpec, size: str) -> str:
    """paths.output_root as the study's trials see it (a study may set it in its overrides)."""
    from common.config import check_overrides

    return check_overrides(spec.phase, [*spec.overrides, *spec.sizes.get(size, [])]).paths.output_root


def retried_trial(trial) -> int | None:
    """The number of the trial this one (a FrozenTrial) repeats: the last of Optuna's heartbeat retries
    (retry_history), else the trial a runner queued it for (retry_of, see requeue); None for a first attempt."""
    history = trial.system_attrs.get("retry_history")
    if history:
        return history[-1]
    return trial.user_attrs.get("retry_of")


def trial_folder_overrides(trial, output_root: str, logger: str) -> list[str]:
    """Each trial checkpoints into <trial root>/trial-<number>; a retry resumes from the last checkpoint of the
    trial it repeats (and so continues its MLflow run), so a preempted or killed trial loses at most
    loop.ckpt_every steps, not all of them."""
    root = Path(output_root) / trial.study.user_attrs[TRIAL_ROOT_ATTR]
    overrides = [f"checkpoint.dir={root / f'trial-{trial.number}'}"]
    previous = retried_trial(trial.study._storage.get_trial(trial._trial_id))
    last = root / f"trial-{previous}" / "last.pt" if previous is not None else None
    if last is not None and last.is_file():
        overrides.append(f"resume={last}")
        trial.set_user_attr("resumed_from", str(last))
        if logger == "mlflow":
            overrides.append(f"+logger.tags.optuna_retry_of={previous}")
    return overrides


# --------------------------------------------------------------------------------------------- a trial
def _suggest(trial, spec: StudySpec) -> dict[str, Any]:
    params = {}
    for name, p in spec.search_space.items():
        if p["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, p["choices"])
        elif p["type"] == "float":
            params[name] = trial.suggest_float(name, p["low"], p["high"], log=p.get("log", False))
        else:
            params[name] = trial.suggest_int(name, p["low"], p["high"], log=p.get("log", False))
    return params


def trial_overrides(
    spec: StudySpec,
    size: str,
    params: dict,
    number: int,
    parent: str | None,
    logger: str = "mlflow",
    gpu: str | None = None,
) -> list[str]:
    overrides = [*spec.overrides, *spec.sizes.get(size, []), *(f"{k}={v}" for k, v in params.items())]
    if logger == "mlflow":
        overrides += [
            f"logger.parent_run_id={parent}",
            f"logger.run_name={spec.name}-trial-{number}",
            f"+logger.tags.optuna_study={spec.name}",
            f"+logger.tags.optuna_trial={number}",
            f"+logger.tags.gpu={gpu if gpu is not None else 'cpu'}",
        ]
    else:
        overrides.append("logger=none")
    return overrides


def make_objective(spec: StudySpec, size: str, parent: str | None, logger: str = "mlflow"):
    import optuna

    from common.config import check_overrides

    train = importlib.import_module(f"{spec.phase}.train").train
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES") or None  # what this worker was given (use_gpu)
    output_root = study_output_root(spec, size)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("gpu", gpu or "cpu")
        try:
            return run_trial(trial)
        except (optuna.TrialPruned, InterruptedError):
            raise
        except Exception as err:  # kept on the trial for the run's summary, then Optuna records the failure
            trial.set_user_attr("error", _one_line(err))
            raise

    def run_trial(trial: optuna.Trial) -> float:
        params = _suggest(trial, spec)
        # the command line's own checks: a value of the wrong type is named, not found deep inside train()
        overrides = trial_overrides(spec, size, params, trial.number, parent, logger, gpu)
        if TRIAL_ROOT_ATTR in trial.study.user_attrs:  # set by the runner (absent: a study driven by hand)
            overrides += trial_folder_overrides(trial, output_root, logger)
        cfg = check_overrides(spec.phase, overrides)
        evals = 0

        def report(step: int, point: dict[str, float]) -> None:
            nonlocal evals
            if spec.report_metric in point:
                evals += 1
                trial.report(point[spec.report_metric], step)
                # the first pruner_warmup_evals evaluations are never pruned, whatever eval_every is
                if evals > spec.pruner_warmup_evals and trial.should_prune():
                    raise optuna.TrialPruned(
                        f"pruned at step {step} ({spec.report_metric}={point[spec.report_metric]:.4g})"
                    )

        summary = train(cfg, on_log=report)
        if summary.get("interrupted"):  # SIGINT/SIGTERM: train() saved a checkpoint; stop the whole sweep
            trial.study.stop()
            requeue(
                trial.study, trial.params, trial.study._storage.get_trial_system_attrs(trial._trial_id), trial.number
            )
            raise InterruptedError(f"trial {trial.number} was stopped by a signal; run the sweep again to go on")
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        if spec.objective not in summary:
            raise KeyError(f"objective {spec.objective!r} is not in train()'s summary: {sorted(summary)}")
        return summary[spec.objective]

    return objective


def _one_line(err: BaseException) -> str:
    from common.config import error_line

    return f"{type(err).__name__}: {error_line(err)}"[:500]


# --------------------------------------------------------------------------------------------- running
def _worker(
    study_file: str,
    size: str,
    storage_url: str,
    parent: str | None,
    logger: str,
    quota: int,
    sampler: str | None = None,
    workers: int = 1,
    gpu: str | None = None,
) -> None:
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    use_gpu(gpu)  # first: before anything here starts CUDA
    if workers > 1:  # share the cores: OpenMP threads of several processes on one core spin against each other
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    spec = load_study(study_file, sampler=sampler)
    study = open_study(spec, storage_url)
    # Each local worker runs its share of the trials still missing, so N workers together neither stop short
    # nor overshoot. Workers on other machines or in a SLURM array may each run them all: MaxTrialsCallback
    # stops a worker once the finished trials and those running elsewhere make the study's total.
    counted = (*_counted_states(), TrialState.RUNNING)
    study.optimize(
        make_objective(spec, size, parent, logger),
        n_trials=quota,
        catch=(Exception,),
        callbacks=[MaxTrialsCallback(spec.n_trials, states=counted), _tag_trial_run(spec, logger)],
    )


def _tag_trial_run(spec: StudySpec, logger: str):
    """After each trial: its MLflow run gets the Optuna state (COMPLETE, PRUNED, FAIL) as a tag."""

    def callback(study, trial) -> None:
        if logger != "mlflow":
            return
        from common.tracking import Store

        store = Store()
        for run_id in store.run_ids(spec.phase, _trial_filter(spec, trial.number)):
            store.set_tags(run_id, {"optuna_state": trial.state.name})
            if trial.state.name == "PRUNED":
                store.set_status(run_id, "KILLED")

    return callback


def summarize(study, spec: StudySpec, parent: str | None) -> dict[str, Any]:
    """Study totals and the best trial; written to the parent MLflow run when there is one."""
    from optuna.trial import TrialState

    counts = {
        s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    }
    summary: dict[str, Any] = {"study": spec.name, "objective": spec.objective, "parent_run_id": parent,
                               **{f"n_{k}": v for k, v in counts.items()}}  # fmt: skip
    if counts["complete"]:
        best = study.best_trial
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
    if parent:
        from common.tracking import Store

        store = Store()
        store.log_metrics(parent, {f"study/n_{key}": value for key, value in counts.items()})
        if counts["complete"]:
            store.log_metrics(parent, {"study/best_value": summary["best_value"]})
            store.set_tags(parent, {"best_trial": summary["best_trial"]})
            store.set_tags(parent, {f"best.{k}": v for k, v in summary["best_params"].items()})
        store.log_text(parent, study.trials_dataframe().to_csv(index=False), "study/trials.csv")
        store.set_status(parent, "FINISHED" if counts["running"] == 0 else "RUNNING")
    return summary


def run_study(
    study_file: str,
    size: str = "demo",
    workers: int | None = None,
    storage: str | None = None,
    logger: str = "mlflow",
    sampler: str | None = None,
    gpus: list[str] | None = None,
    workers_per_gpu: int = 1,
    slurm_array: int | None = None,
    slurm_params: list[str] | None = None,
    trials: int | None = None,
) -> dict[str, Any]:
    """Run the study's missing trials (at most `trials` of them now); `gpus` None means the visible GPUs (see
    place_workers). With `slurm_array` N the workers are N SLURM array tasks instead (sweeps/slurm.py)."""
    spec = load_study(study_file, sampler=sampler)
    if size not in spec.sizes:
        raise ValueError(f"size={size!r} is not one of this study's sizes: {sorted(spec.sizes)}")
    if slurm_array:
        from sweeps.slurm import run_array

        return run_array(spec, study_file, size, storage, logger, sampler, slurm_array, slurm_params or [])
    placement = place_workers(visible_gpus() if gpus is None else gpus, workers, workers_per_gpu)
    storage_url = storage or default_storage(spec, len(placement))
    if logger == "mlflow":
        from common.tracking import ensure_store

        ensure_store()  # migrate the MLflow store once, before several processes use it
    check_local_storage(storage_url)
    with _sole_runner(storage_url):
        return _run(spec, study_file, size, placement, storage_url, logger, sampler, trials)


def _sole_runner(storage_url: str):
    """A local storage is one runner's (its workers included): at start a runner fails the trials it finds
    RUNNING as left by a dead process, which would kill a live runner's trials. A second one is refused."""
    import contextlib

    from common.sqlite_lock import sole_user

    if not is_local(storage_url):
        return contextlib.nullcontext()
    path = Path(storage_url.removeprefix("journal:").removeprefix("sqlite:///"))
    return sole_user(
        path,
        f"storage {storage_url} is in use by another sweep; a local storage takes one runner: wait for it, "
        "give it more --workers, or share a PostgreSQL storage between runners",
    )


def _run(spec: StudySpec, study_file: str, size: str, placement: list, storage_url: str, logger: str, sampler,
         trials: int | None = None):  # fmt: skip
    workers = len(placement)
    study = open_study(spec, storage_url)
    first_new = len(study.get_trials(deepcopy=False))  # trials numbered from here on are this run's
    if is_local(storage_url):
        requeued = requeue_stale_trials(study)
        if requeued:
            print(f"{len(requeued)} trial(s) left running by an earlier, interrupted run: failed and queued again")
            if logger == "mlflow":
                fail_tracking_runs(spec, requeued)
    parent = parent_run_id(study, spec, size) if logger == "mlflow" else None
    trial_root(study)
    missing = spec.n_trials - len(study.get_trials(deepcopy=False, states=_counted_states()))
    if trials is not None:
        missing = min(missing, trials)
    quotas = [missing // workers + (1 if i < missing % workers else 0) for i in range(workers)]
    print(
        f"study {spec.name!r}: {spec.n_trials} trials ({max(missing, 0)} to run now), storage {storage_url}, "
        f"{workers} worker(s) on {_placement_text(placement)}"
    )
    if missing > 0 and workers == 1:
        _worker(str(study_file), size, storage_url, parent, logger, missing, sampler, 1, placement[0])
    elif missing > 0:
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(
                target=_worker,
                args=(str(study_file), size, storage_url, parent, logger, quota, sampler, workers, gpu),
            )
            for quota, gpu in zip(quotas, placement)
            if quota > 0
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            print(f"warning: {len(bad)} worker(s) exited with codes {bad}; their trials are recorded as failed")
    study = open_study(spec, storage_url)
    return {**summarize(study, spec, parent), "this_run": this_run(study, first_new)}


def _placement_text(placement: list) -> str:
    if placement[0] is None:
        return "the CPU"
    return ", ".join(f"GPU {g} x{placement.count(g)}" for g in dict.fromkeys(placement))


def this_run(study, first_number: int) -> dict[str, Any]:
    """The trials this run finished, how many failed, and the first failure's error."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.number >= first_number and t.state.is_finished()]
    failed = sorted((t for t in done if t.state == TrialState.FAIL), key=lambda t: t.number)
    first_error = None
    if failed:
        error = failed[0].user_attrs.get("error", "no error recorded (its worker process died)")
        first_error = f"trial {failed[0].number}: {error}"
    return {"trials": len(done), "failed": len(failed), "first_error": first_error}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What a sweep prints when it ends: the study's trial counts, its best trial, where its runs are."""
    counts = ", ".join(f"{summary.get(f'n_{k}', 0)} {k}" for k in ("complete", "pruned", "fail", "running"))
    lines = [f"study {summary['study']!r}: {counts}".replace(" fail", " failed")]
    if "best_trial" in summary:
        params = ", ".join(f"{k}={v}" for k, v in summary["best_params"].items())
        lines.append(f"  best   {summary['objective']} {summary['best_value']:.4g} with {params} "
                     f"(trial {summary['best_trial']})")  # fmt: skip
    if summary.get("parent_run_id"):
        lines.append(f"  mlflow parent run {summary['parent_run_id']}: its trials are nested under it")
    return lines


def exit_status(summary: dict[str, Any]) -> int:
    """1 when every trial of this run failed, 0 otherwise; failures are counted on one line either way."""
    run = summary["this_run"]
    if run["failed"] and run["failed"] == run["trials"]:
        message = f"error: all {run['failed']} trial(s) of this run failed; the first, {run['first_error']}"
        print(message, file=sys.stderr)
        return 1
    if run["failed"]:
        print(f"{run['failed']} of {run['trials']} trial(s) of this run failed; the first, {run['first_error']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.run", description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a study file, or the name of one in sweeps/studies/")
    parser.add_argument("--size", default="demo", help="which of the study's sizes to run (demo, full)")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="local worker processes (default: GPUs x --workers-per-gpu, or 1)",
    )
    parser.add_argument("--gpus", help="GPU ids for the workers, e.g. 0,2,3 (default: every visible GPU)")
    parser.add_argument("--workers-per-gpu", type=positive_int, default=1, help="workers sharing each GPU")
    parser.add_argument("--storage", help="Optuna storage URL (default: optuna.db, or a journal file for workers>1)")
    parser.add_argument("--sampler", choices=["grid", "tpe"], help="override the study file's sampler")
    parser.add_argument("--trials", type=positive_int, help="run at most N of the study's missing trials now")
    parser.add_argument("--logger", default="mlflow", choices=["mlflow", "none"])
    parser.add_argument("--slurm", action="store_true", help="submit the workers as a SLURM job array (--array N)")
    parser.add_argument("--array", type=positive_int, help="with --slurm: how many array tasks (workers)")
    parser.add_argument(
        "--slurm-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --slurm: change a job setting of experiments/hydra/launcher/slurm.yaml, e.g. partition=gpu",
    )
    args = parser.parse_args(argv)
    if args.slurm != (args.array is not None):
        parser.error("--slurm and --array N go together: --slurm --array N submits N workers")
    if args.slurm and args.trials:
        parser.error("--trials is for local runs; an array's tasks run until the study has its n_trials")
    if args.slurm and (args.workers or args.gpus or args.workers_per_gpu != 1):
        parser.error("--slurm places its workers itself (one GPU per array task): drop --workers/--gpus")
    summary: dict[str, Any] = {}

    def body() -> None:
        gpus = None if args.slurm else parse_gpus(args.gpus)
        summary.update(
            run_study(
                args.study,
                args.size,
                args.workers,
                args.storage,
                args.logger,
                args.sampler,
                gpus,
                args.workers_per_gpu,
                args.array,
                args.slurm_param,
                args.trials,
            )
        )
        print("\n".join(summary_lines(summary)))

    return run_guarded(body) or exit_status(summary)


if __name__ == "__main__":
    sys.exit(main())
