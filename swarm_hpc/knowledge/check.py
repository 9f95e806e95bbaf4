"""A spec's `[knowledge]` indexes, checked before a run (`swarm-hpc run`, `submit`, `serve`, `eval`) and again on
rank 0 when it opens them (reader.py): each one there, whole, and all embedded by one model.
"""

from __future__ import annotations

from pathlib import Path

from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.errors import UserError
from swarm_hpc.knowledge.index import Index, load_index


def check_indexes(spec: SwarmSpec, spec_dir: Path, where: str) -> dict[str, Index]:
    """{collection name ("" for `index`): the loaded index} of every index the spec names, or one UserError line
    naming the field. The indexes must share one embedding model, since one query vector serves them all."""
    k = spec.knowledge
    out: dict[str, Index] = {}
    for name, path in k.index_paths(spec_dir).items():
        field = f"knowledge.collections.{name}" if name else "knowledge.index"
        out[name] = load_index(path, where, field)
    first = next(iter(out.values()), None)
    for name, idx in out.items():
        if first is not None and (idx.model.name, idx.model.dim) != (first.model.name, first.model.dim):
            raise UserError(where, f"the indexes use different embedding models: {first.path} was built with "
                            f"{first.model.name} ({first.model.dim} dims), {idx.path} with {idx.model.name} "
                            f"({idx.model.dim} dims)", "build them all with one --model (e.g. minilm)",
                            f"knowledge.collections.{name}" if name else "knowledge.index")
    return out


def check_knowledge(spec: SwarmSpec, spec_dir: Path, where: str) -> None:
    """Before a launch: the indexes the spec's [knowledge] names (check_indexes), if any."""
    if spec.knowledge.enabled:
        check_indexes(spec, spec_dir, where)
