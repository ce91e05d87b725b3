"""The `local` launcher: cells one after another in this process (the default)."""

from __future__ import annotations

from tqdm.auto import tqdm

from anbench import interrupts
from anbench.launchers import Launch
from anbench.launchers.execute import execute_cell


def launch_local(job: Launch) -> None:
    for key in job.todo:
        interrupts.check()
        job.label(key.label())
        for attempt in range(1, job.retries + 2):
            bar = tqdm(total=0, desc="train", unit="step", leave=False, disable=job.quiet,
                       dynamic_ncols=True)

            def progress(step: int, total: int, terms: dict[str, float], bar=bar) -> None:
                bar.total = total
                bar.update(1)
                if terms:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(terms.items())[:3]})

            try:
                outcome = execute_cell(job.ctx, key, job.env, job.store, log=job.log,
                                       progress=progress, attempt=attempt, reraise_fatal=True)
            finally:
                bar.close()
            if outcome.status != "failed":
                break
        job.finish(outcome)
