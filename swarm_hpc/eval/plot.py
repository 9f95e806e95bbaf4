"""The eval's PNG: accuracy per arm with its 95 % interval, and accuracy of a vote among k experts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from swarm_hpc.errors import UserError
from swarm_hpc.eval.arms import PER_EXPERT

PNG = "accuracy.png"


def plot(result: dict[str, Any], out: Path) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise UserError(str(out), "cannot draw the plot: matplotlib is not installed",
                        "pip install matplotlib (results.json and results.md are written)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted(result["arms"].items(), key=lambda kv: kv[1]["accuracy"])
    curve = result.get("vote_by_experts") or {}
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(11 if curve else 6.5, 0.45 * len(arms) + 2.2),
                             squeeze=False)
    ax = axes[0][0]
    acc = [a["accuracy"] for _, a in arms]
    err = [[a["accuracy"] - a["ci"][0] for _, a in arms], [a["ci"][1] - a["accuracy"] for _, a in arms]]
    # blue: one expert (alone, sampled, or with the checker); orange: the swarm
    colors = ["#4c72b0" if n.partition(":")[0] in PER_EXPERT else "#dd8452" for n, _ in arms]
    ax.barh([n for n, _ in arms], acc, xerr=err, color=colors, capsize=3)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95 % bootstrap interval)")
    answered, total = max((a["n"] for _, a in arms), default=0), result["n_questions"]
    ax.set_title(f"{result['questions_from']}: {answered} questions" + (f" of {total} so far" if answered < total else ""))
    if curve:
        ks = [int(k) for k in curve]
        ax2 = axes[0][1]
        ax2.plot(ks, list(curve.values()), marker="o")
        ax2.set_xticks(ks)
        ax2.set_ylim(0, 1)
        ax2.set_xlabel("experts voting (k)")
        ax2.set_ylabel("accuracy")
        ax2.set_title("vote among k experts (round 1 of `vote`)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(out) / PNG
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path
