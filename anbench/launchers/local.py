"""The `local` launcher: cells one after another in this process (the default).

Where `run.fuse_cells` fuses (`anbench.cell_group.fusion_on`: by default on a CPU), cells that
can train together (a fusable method, same dataset, shots and seed) run as one group; each is
still claimed, stored and logged as its own cell, and a member that fails is retried alone.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from anbench import interrupts
from anbench.launchers import Launch
from anbench.launchers.execute import CellOutcome, execute_cell, execute_group
from anbench.store import CellKey


def local_groups(job: Launch) -> list[list[CellKey]]:
    """The pending cells in the order they run: fused groups where `run.fuse_cells` fuses."""
    from anbench.cell_group import fusion_on, plan_groups

    if job.env is None or not fusion_on(job.ctx.config, job.env.device):
        return [[key] for key in job.todo]

    specs = [job.ctx.resolve(key, job.env.backbone.weights_hash) for key in job.todo]
    return [[spec.key for spec in group] for group in plan_groups(specs)]


def launch_local(job: Launch) -> None:
    for group in local_groups(job):
        interrupts.check()
        if len(group) == 1:
            _run_alone(job, group[0], first_attempt=1)
            continue
        job.label(f"{len(group)} cells fused: {group[0].label()} ...")
        bar = _bar(job)
        try:
            outcomes = execute_group(job.ctx, group, job.env, job.store, log=job.log,
                                     progress=_progress(bar), reraise_fatal=True)
        finally:
            bar.close()
        for outcome in outcomes:
            if outcome.status == "failed" and job.retries > 0:  # retried alone
                job.label(outcome.key.label())
                _run_alone(job, outcome.key, first_attempt=2)
            else:
                job.finish(outcome)


def _bar(job: Launch) -> tqdm:
    return tqdm(total=0, desc="train", unit="step", leave=False, disable=job.quiet,
                dynamic_ncols=True)


def _progress(bar: tqdm):
    def progress(step: int, total: int, terms: dict[str, float]) -> None:
        bar.total = total
        bar.update(1)
        if terms:
            bar.set_postfix({k: f"{v:.3f}" for k, v in list(terms.items())[:3]})

    return progress


def _run_alone(job: Launch, key: CellKey, first_attempt: int) -> None:
    job.label(key.label())
    outcome: CellOutcome | None = None
    for attempt in range(first_attempt, job.retries + 2):
        bar = _bar(job)
        try:
            outcome = execute_cell(job.ctx, key, job.env, job.store, log=job.log,
                                   progress=_progress(bar), attempt=attempt,
                                   reraise_fatal=True)
        finally:
            bar.close()
        if outcome.status != "failed":
            break
    assert outcome is not None
    job.finish(outcome)
