"""Multi-process training: `instructemo sft` re-launches itself under torchrun.

We hand distribution to the tools built for it: torchrun starts one process per
device, accelerate (inside the Trainer) sets up DDP (NCCL on GPUs, gloo on
CPUs), and DeepSpeed takes over when the config names a `deepspeed` JSON.
Multi-node runs read the standard NNODES, NODE_RANK, MASTER_ADDR and
MASTER_PORT variables.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

from instructemo.errors import UserError
from instructemo.run.directory import RunDir

log = logging.getLogger(__name__)


def inside_launcher() -> bool:
    return "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, config: str, overrides: list[str]) -> list[str]:
    nnodes = os.environ.get("NNODES", "1")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
    if nnodes != "1":
        command += [
            f"--node_rank={os.environ.get('NODE_RANK', '0')}",
            f"--master_addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}",
            f"--master_port={os.environ.get('MASTER_PORT', '29500')}",
        ]
    else:
        command += ["--master_addr=127.0.0.1", f"--master_port={os.environ.get('MASTER_PORT') or _free_port()}"]
    # The parent evaluates after training, once; the workers only train.
    return command + ["-m", "instructemo.cli", "sft", config, *overrides, f"nproc_per_node={nproc}", "do_eval=false"]


def relaunch(nproc: int, config: str, overrides: list[str], output_dir: str) -> None:
    """Train in `nproc` processes under torchrun; return once the run in `output_dir` is saved whole."""
    command = torchrun_command(nproc, config, overrides)
    log.info("launching %d training processes: %s", nproc, " ".join(command))
    # The workers find output_dir prepared by this process (see preflight.starts_the_run).
    completed = subprocess.run(command, env={**os.environ, "INSTRUCTEMO_RUN_STARTED": "1"})
    if completed.returncode == 0:
        return
    # This process marked the run unfinished before the launch, and only the first worker's final save marks it
    # complete again: a worker that fails after that failed while shutting down, and the run is whole.
    if RunDir(output_dir).is_complete():
        log.warning(
            "a training process exited with status %d after the run was saved whole (it crashed while shutting "
            "down, not while training); %s is complete",
            completed.returncode,
            output_dir,
        )
        return
    raise UserError(
        f"distributed training failed (torchrun exit status {completed.returncode}); the workers' messages are above"
    )


def leave_process_group() -> None:
    """A worker's last step after a finished run: wait for the others, then leave the process group.

    The first worker writes the run after the others are done with it; a worker that exited first would have
    torchrun stop it part-way if the exit failed. And left to interpreter exit, the process group is torn down
    in no set order while its communication threads still run: a worker could abort ("terminate called without
    an active exception") after a complete run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
