"""Run directories: where a run's spec snapshot, transcript, summary and final answer live.

runs/<YYYYmmdd-HHMMSS>-<spec name>-<4 hex>/
    spec.json          the validated spec (defaults applied) and the folder its relative paths start from
    transcript.jsonl   one record per message, appended per step (see recorder.py)
    summary.json       progress and totals, rewritten atomically after every step
    final.md           the final answer, written atomically at the end
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.core.recorder import SPEC_SNAPSHOT, SUMMARY
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.core.tomlfile import validate_model
from swarm_hpc.errors import UserError, regular_file


def output_base(spec: SwarmSpec, out: Path | None) -> Path:
    """Where run directories go: --out, else the spec's output_dir, relative to the current folder."""
    base = Path(out) if out else Path(spec.output_dir)
    return base if base.is_absolute() else Path.cwd() / base


def new_run_dir(spec: SwarmSpec, spec_path: Path, out: Path | None) -> Path:
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{spec_path.stem}-{secrets.token_hex(2)}"
    return create_run_dir(output_base(spec, out) / name, spec, spec_path)


def create_run_dir(run_dir: Path, spec: SwarmSpec, spec_path: Path) -> Path:
    """Make `run_dir` (it must not exist yet) with the spec snapshot in it."""
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise UserError(str(spec_path), f"cannot create the run directory {str(run_dir)!r}: {e.strerror}",
                        "give a writable folder with --out", "output_dir") from None
    atomic_write_json(run_dir / SPEC_SNAPSHOT, {"spec_path": str(spec_path.resolve()),
                                                "spec_dir": str(spec_path.resolve().parent),
                                                "spec": spec.model_dump(mode="json")})
    return run_dir


def load_snapshot(run_dir: Path) -> tuple[SwarmSpec, Path]:
    """The run's spec and the folder its relative paths start from; a damaged spec.json is a UserError."""
    path = regular_file(Path(run_dir) / SPEC_SNAPSHOT, str(run_dir), "the spec snapshot")
    fix = "it was changed or damaged: start a new run from the spec file instead"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        spec_dir = Path(data["spec_dir"])
    except (ValueError, KeyError, TypeError):
        raise UserError(str(path), "is not a spec snapshot written by swarm-hpc", fix) from None
    return validate_model(data.get("spec"), SwarmSpec, str(path)), spec_dir


def check_run_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / SPEC_SNAPSHOT).exists():
        raise UserError(str(run_dir), "is not a swarm-hpc run directory (no spec.json)",
                        "give a folder made by `swarm-hpc run`, e.g. runs/20261125-101500-debate-1a2b")
    return run_dir


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
