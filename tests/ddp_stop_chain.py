"""One DDP rank of ``test_ddp_stops.py``: runs ``train`` for each job of a plan, one after another in
this process, as the tasks of a SLURM job do (the test starts every rank with its SLURM variables).

    python tests/ddp_stop_chain.py <root> <plan.json> <report.json>

plan: ``[{"run": <run dir name>, "overrides": [...], "env": {...}}, ...]``. Rank 0 writes, after each
job, ``[{"run", "ended" (the exception's class name or null), "saves" (global steps of the checkpoints
written), "metrics"}, ...]`` to the report (a job killed by SIGKILL leaves the earlier entries).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import resume_helpers  # noqa: E402
from conftest import compose_cfg  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from lrnn_lightning.run import train  # noqa: E402


def main(root: Path, plan: list[dict], report_path: Path) -> None:
    rank = int(os.environ["SLURM_PROCID"])
    report = []
    for job in plan:
        environ = dict(os.environ)
        os.environ.update(job.get("env", {}))
        resume_helpers.SAVES.clear()
        metrics, ended = None, None
        try:
            metrics = train(compose_cfg("train", job["overrides"], root / job["run"], root))
        except BaseException as e:  # the way a stopped job ends (SIGTERMException, SystemExit)
            ended = type(e).__name__
        finally:
            GlobalHydra.instance().clear()
            os.environ.clear()
            os.environ.update(environ)
        report.append({"run": job["run"], "ended": ended, "saves": list(resume_helpers.SAVES),
                       "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}})
        if rank == 0:
            report_path.write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
