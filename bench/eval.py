#!/usr/bin/env python3
"""Answer-quality benchmark (issue 11): every arm of `swarm-hpc eval` on the same questions and experts, on the
capable bundled model, and the targets checked from the results.

    .venv/bin/python bench/eval.py [--spec jobs/eval/qwen.toml] [--sets rg:gsm_symbolic:100:1,...] [--arms ...]
                                   [--work bench/work/eval]

Each set runs as one eval (resumable: run the same command again after a kill, and finished questions are
kept; the folders under --work are the evals themselves). Then bench/results/eval-<set>.{json,md,png} are
copied from them, and bench/results/eval.json sums up, per set: the best single expert, the best swarm arm,
the difference in points, and whether their 95 % intervals overlap. Target: the best swarm arm beats the best
single expert by >= 10 points with intervals that do not overlap, on sets where one expert scores 20-70 %.
Accuracy does not depend on how busy the machine is (greedy single answers; seeded samples), wall times do.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from swarm_hpc.atomic import atomic_write_json  # noqa: E402
from swarm_hpc.eval.arms import PER_EXPERT  # noqa: E402

SETS = "rg:gsm_symbolic:100:1,rg:leg_counting:100:1,rg:basic_arithmetic:100:1"
ARMS = "single,sc,calc,code,vote,verify,program,debate,moa"


def summary(result: dict) -> dict:
    """The target's numbers for one set: the best single expert (greedy, alone) against the best swarm arm; and,
    since a checker is not the swarm, the best expert alone with the checker (calc:<expert>, code:<expert>) beside
    them."""
    arms = result["arms"]
    singles = {k: v for k, v in arms.items() if k.startswith("single:")}
    checked = {k: v for k, v in arms.items() if k.startswith(("calc:", "code:"))}
    swarm = {k: v for k, v in arms.items() if k.partition(":")[0] not in PER_EXPERT}
    best_single = max(singles, key=lambda k: singles[k]["accuracy"])
    best_swarm = max(swarm, key=lambda k: swarm[k]["accuracy"])
    a, b = singles[best_single], swarm[best_swarm]
    out = {"n": result["n_questions"], "best_single": best_single, "best_single_accuracy": a["accuracy"],
           "best_swarm": best_swarm, "best_swarm_accuracy": b["accuracy"],
           "points": round(100 * (b["accuracy"] - a["accuracy"]), 1),
           "intervals_overlap": overlap(a["ci"], b["ci"]),
           "single_in_range": 0.2 <= a["accuracy"] <= 0.7,
           "sc": {k: v["accuracy"] for k, v in arms.items() if k.startswith("sc:")}}
    if checked:
        best_checked = max(checked, key=lambda k: checked[k]["accuracy"])
        c = checked[best_checked]
        out |= {"best_single_with_checker": best_checked, "best_single_with_checker_accuracy": c["accuracy"],
                "points_over_checker": round(100 * (b["accuracy"] - c["accuracy"]), 1),
                "intervals_overlap_checker": overlap(c["ci"], b["ci"])}
    return out


def overlap(a: list[float], b: list[float]) -> bool:
    return not (b[0] > a[1] or a[0] > b[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "jobs" / "eval" / "qwen.toml"))
    ap.add_argument("--sets", default=SETS)
    ap.add_argument("--arms", default=ARMS)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "eval")
    args = ap.parse_args()
    results = HERE / "results"
    overview = {}
    for qset in args.sets.split(","):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", qset.removeprefix("rg:")).strip("-")
        out = args.work / name
        rc = subprocess.run([sys.executable, "-m", "swarm_hpc", "eval", args.spec, "--questions", qset, "--arms",
                             args.arms, "--out", str(out)], cwd=ROOT).returncode
        if rc != 0:
            print(f"bench/eval.py: the eval of {qset} ended with code {rc}; run the same command to continue it")
            return rc
        for ext in ("json", "md", "png"):
            src = out / ("accuracy.png" if ext == "png" else f"results.{ext}")
            shutil.copyfile(src, results / f"eval-{name}.{ext}")
        overview[qset] = summary(json.loads((out / "results.json").read_text()))
        print(json.dumps({qset: overview[qset]}, indent=1))
    atomic_write_json(results / "eval.json", {"spec": args.spec, "arms": args.arms, "sets": overview})
    return 0


if __name__ == "__main__":
    sys.exit(main())
