"""How hits are printed by `swarm-hpc index query`, in one process or on rank 0 of a query across ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from swarm_hpc.knowledge.index import Hit


def shown(text: str, width: int = 300) -> str:
    one = " ".join(text.split())
    return one if len(one) <= width else one[:width - 1] + "…"


def hit_json(h: Hit, rank: int) -> dict[str, Any]:
    return {"rank": rank, "score": round(h.score, 6), "source": h.source, "start": h.start, "end": h.end,
            "position": h.position, "chunk": h.chunk, "text": h.text}


def print_hits(index_path: Path, text: str, k: int, model: str, hits: list[Hit], count: int, took_ms: float,
               as_json: bool, ranks: int = 1) -> None:
    """The hits on stdout (JSON, or two lines each), and a count line on stderr."""
    if as_json:
        out: dict[str, Any] = {"index": str(index_path), "query": text, "k": k, "model": model,
                               "ms": round(took_ms, 2)}
        if ranks > 1:
            out["ranks"] = ranks
        out["hits"] = [hit_json(h, i) for i, h in enumerate(hits, start=1)]
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        print(flush=True)
        return
    for i, h in enumerate(hits, start=1):
        print(f"{i:>2}. {h.score:.3f}  {h.source}:{h.start}-{h.end}")
        print(f"    {shown(h.text)}")
    sys.stdout.flush()
    on = f" on {ranks} ranks" if ranks > 1 else ""
    print(f"({len(hits)} of {count} chunks{on}, {took_ms:.0f} ms)", file=sys.stderr, flush=True)
