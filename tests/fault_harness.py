"""`python tests/fault_harness.py ARGS...`: the instructemo command with one fault injected, for test_faults.py.

INSTRUCTEMO_FAULT names it:
- kill:mid-staging      SIGKILL once the model is saved into the staging folder, before the other final files
- kill:staged           SIGKILL with every final file staged, none moved into place
- kill:move-K           SIGKILL right after the K-th staged file is moved into place
- kill:before-complete  SIGKILL with every file in place, just before the manifest says complete
- kill:checkpoint-N      SIGKILL once checkpoint-N is whole (its progress file written), as a crash would stop a run
- kill:checkpoint-N#K    the same, the K-th time a checkpoint-N is whole in this process (tune trains run after run)
- kill:step-N           SIGKILL at the end of optimizer step N: mid-training, between checkpoints
- kill:half-checkpoint-N  SIGKILL inside the Trainer's save of checkpoint-N: its weights written, its optimizer not
- fsize:N               a file-size limit of N bytes (RLIMIT_FSIZE), as a full disk would refuse writes
"""

import os
import resource
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def inject(fault: str) -> None:
    kind, _, point = fault.partition(":")
    if kind == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(point), int(point)))
        return
    from instructemo.run import directory as rundir
    from instructemo.train import monitor as monitor
    from instructemo.train import trainer as trainer

    if point.startswith("step-"):
        step, real_step_end = int(point.split("-")[1]), monitor.RunMonitor.on_step_end

        def on_step_end(self, args, state, control, **kwargs):
            real_step_end(self, args, state, control, **kwargs)
            if state.global_step == step:
                die()

        monitor.RunMonitor.on_step_end = on_step_end
    elif point.startswith("half-checkpoint-"):
        from transformers import Trainer

        name = point.removeprefix("half-")

        def save_optimizer(self, output_dir):
            if Path(output_dir).name == name:
                die()

        Trainer._save_optimizer_and_scheduler = save_optimizer
    elif point.startswith("checkpoint-"):
        step, _, nth = point.split("-")[1].partition("#")
        step, remaining, real_on_save = int(step), [int(nth or 1)], monitor.RunMonitor.on_save

        def on_save(self, args, state, control, **kwargs):
            real_on_save(self, args, state, control, **kwargs)
            if state.global_step == step:
                remaining[0] -= 1
                if remaining[0] == 0:
                    die()

        monitor.RunMonitor.on_save = on_save
    elif point == "mid-staging":
        trainer.write_atomic = lambda *args, **kwargs: die()
    elif point == "staged":
        rundir.RunDir.commit = lambda self: die()
    elif point.startswith("move-"):
        wanted, moved, real_replace = int(point.split("-")[1]), [0], os.replace

        def replace(source, target, *args, **kwargs):
            real_replace(source, target, *args, **kwargs)
            if Path(source).parent.name == rundir.STAGING_DIR and Path(target).parent.name != rundir.STAGING_DIR:
                moved[0] += 1
                if moved[0] == wanted:
                    die()

        os.replace = replace
    elif point == "before-complete":
        real_write = rundir.RunDir._write

        def write(self, manifest):
            if manifest["state"] == rundir.COMPLETE and manifest.get("kind") == "train":
                die()
            real_write(self, manifest)

        rundir.RunDir._write = write
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(os.environ["INSTRUCTEMO_FAULT"])
    from instructemo.cli import main

    sys.exit(main(sys.argv[1:]))
