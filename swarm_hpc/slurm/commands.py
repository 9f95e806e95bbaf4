"""SLURM's command-line tools, called with clear errors (`sbatch`, `squeue --json`, `scontrol`, `scancel`, `sacct`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from swarm_hpc.errors import UserError


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise UserError(name, "SLURM's client tools are not installed", "install slurm-client (bash install.sh --dev), or run on a SLURM login node")
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    if not conf.is_file():  # the tools would retry for a minute before saying so
        raise UserError(str(conf), "no SLURM configuration here, so no cluster to talk to",
                        "set SLURM_CONF to your cluster's slurm.conf, or start the local one: eval \"$(slurm/local-cluster.sh start)\"")
    return path


def run_tool(name: str, *args: str, input: str | None = None, timeout: float = 30) -> str:
    """Run a SLURM tool; a failure (no controller, bad option, unknown partition) is one UserError line."""
    try:
        p = subprocess.run([_tool(name), *args], input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(name, f"no answer within {timeout:g} s", "check that slurmctld is running and SLURM_CONF points at its slurm.conf") from None
    if p.returncode != 0:
        msg = " ".join((p.stderr or p.stdout).split()) or f"exit code {p.returncode}"
        raise UserError(name, msg, _fix_for(msg))
    return p.stdout


def _fix_for(msg: str) -> str:
    m = msg.lower()
    if "unable to contact slurm controller" in m or "connection refused" in m or "could not establish" in m or "zero bytes" in m:
        return "start the cluster (slurm/local-cluster.sh start) or set SLURM_CONF to a running cluster's slurm.conf"
    if "invalid partition" in m:
        return "use a partition that `sinfo` lists, in the spec's [slurm] partition"
    if "node count specification invalid" in m or "more processors requested than permitted" in m or "requested node configuration is not available" in m:
        return "ask for fewer tasks or nodes than the cluster has (see `sinfo`), or use fewer experts"
    if "invalid job id" in m:
        return "give a job id that `swarm-hpc status` lists"
    return "see the SLURM message above"


def check_script(script: str, *args: str) -> None:
    """`sbatch --test-only`: SLURM accepts some jobs that can never start (more nodes than the partition has) and
    leaves them pending; this says so at once, as a UserError."""
    run_tool("sbatch", "--test-only", *args, input=script)


# Pending reasons of a job that can never start as asked (SLURM accepts it and would leave it pending forever).
NEVER_STARTS = {"PartitionNodeLimit": "requested node configuration is not available (more nodes than the partition has)",
                "PartitionConfig": "requested node configuration is not available in the partition",
                "PartitionTimeLimit": "a time limit above the partition's MaxTime",
                "BadConstraints": "requested node configuration is not available (constraints)"}


def sbatch(script: str, *args: str) -> int:
    """Submit a job script (on stdin); returns the job id. A job SLURM accepts but could never start is cancelled
    at once and is a UserError. (Not `sbatch --test-only` first: that uses up a job id of its own.)"""
    out = run_tool("sbatch", "--parsable", *args, input=script)
    job = int(out.strip().split(";")[0])
    fields = dict(w.split("=", 1) for w in run_tool("scontrol", "-o", "show", "job", str(job)).split() if "=" in w)
    reason = fields.get("Reason", "")
    if fields.get("JobState") == "PENDING" and reason in NEVER_STARTS:
        run_tool("scancel", str(job))
        raise UserError("sbatch", f"job {job} could never start: {NEVER_STARTS[reason]} (SLURM: {reason}); it was cancelled",
                        "ask for fewer tasks or nodes than the cluster has (see `sinfo`), or use fewer experts, or a "
                        "shorter [slurm] time")
    return job


def squeue_jobs() -> list[dict[str, Any]]:
    """Every job squeue knows (running, pending, and finished ones within MinJobAge)."""
    return json.loads(run_tool("squeue", "--json", "--all")).get("jobs", [])
