"""The run's PNG: the global model's test accuracy per round, and the centralised baseline as a line."""

from __future__ import annotations

import io
from pathlib import Path

from swarm_hpc.atomic import atomic_write_bytes
from swarm_hpc.errors import UserError
from swarm_hpc.fed import record


def plot(run_dir: Path) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise UserError(str(run_dir), "cannot draw the plot: matplotlib is not installed",
                        "pip install matplotlib (rounds.jsonl and summary.json are written)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = record.read_rounds(run_dir)
    summary = record.read_json(Path(run_dir) / record.SUMMARY) or {}
    central = (record.read_json(Path(run_dir) / record.CENTRAL) or {}).get("accuracy")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["round"] for r in rounds], [r["accuracy"] for r in rounds], marker="o", markersize=3,
            label=f"federated ({summary.get('strategy', '?')}, {summary.get('clients', '?')} clients)")
    if central is not None:
        ax.axhline(central, color="#dd8452", linestyle="--", label=f"centralised ({central:.3f})")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{summary.get('name', '')}: Dirichlet alpha {summary.get('dirichlet_alpha', '?')}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(run_dir) / record.PNG
    atomic_write_bytes(path, buf.getvalue())
    return path
