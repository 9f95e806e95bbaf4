"""The router's training data: records of requests and the skill that should take them, one JSON object a line:

    {"request": "What is 17 times 23?", "skill": "math", "node": "pi3"}

`node` (optional) is where the record was made: with it, each client trains on one node's records (as many
nodes as clients); without it, the records are split non-IID like any data set. Records can come from eval
results (the skill of an expert that answered right) or be written by hand. Each request is embedded with a
frozen embedding model (the bundled MiniLM, through llama.cpp): the router learns a small classifier on top."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swarm_hpc.errors import UserError
from swarm_hpc.fed.data import Shard

SKILL_FIX = "each record is {\"request\": TEXT, \"skill\": SKILL} with an optional \"node\""


@dataclass(frozen=True)
class Records:
    requests: list[str]
    skills: list[str]
    nodes: list[str] | None   # None: no record says where it was made

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.skills))


def read_records(path: Path) -> Records:
    """The records file; a malformed line is one UserError naming the file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(str(path), "records file not found", "give the JSONL file of router records", "records") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(str(path), f"cannot read the records file ({e})", "give a UTF-8 JSONL file", "records") from None
    requests, skills, nodes = [], [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise UserError(where, f"not a JSON object ({e.args[0]})", SKILL_FIX) from None
        if not isinstance(rec, dict):
            raise UserError(where, "not a JSON object", SKILL_FIX)
        req, skill, node = rec.get("request"), rec.get("skill"), rec.get("node")
        if not isinstance(req, str) or not req.strip():
            raise UserError(where, "no \"request\" text", SKILL_FIX, "request")
        if not isinstance(skill, str) or not skill.strip():
            raise UserError(where, "no \"skill\"", SKILL_FIX, "skill")
        if node is not None and not isinstance(node, str | int):
            raise UserError(where, "\"node\" is not a name", "give the node's name, e.g. \"pi3\"", "node")
        requests.append(req.strip())
        skills.append(skill.strip())
        nodes.append(None if node is None else str(node))
    if not requests:
        raise UserError(str(path), "the records file has no records", SKILL_FIX, "records")
    if len(set(skills)) < 2:
        raise UserError(str(path), f"every record has skill {skills[0]!r}: there is nothing to learn",
                        "give records of at least two skills", "skill")
    named = [x for x in nodes if x is not None]
    if named and len(named) != len(nodes):
        raise UserError(str(path), "some records name a \"node\" and some do not", "give every record a node, or none")
    return Records(requests, skills, [str(x) for x in nodes] if named else None)


def from_eval(eval_dir: Path, node: str | None = None) -> tuple[list[dict[str, str]], int]:
    """Router records from a finished `swarm-hpc eval` (its spec.json and results.json): for each question that
    some `single:<expert>` arm answered right and some other got wrong, the request and the first skill of the
    first expert (in spec order, with skills) that was right. Also the number of questions passed over (all
    right, all wrong, or only experts without skills right: nothing to learn from them)."""
    from swarm_hpc.core.rundir import load_snapshot
    from swarm_hpc.eval.results import RESULTS

    spec, _ = load_snapshot(eval_dir)
    path = Path(eval_dir) / RESULTS
    fix = "give the folder of a finished `swarm-hpc eval` with single:<expert> arms"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        questions = results["questions"]
    except FileNotFoundError:
        raise UserError(str(path), "not found: the eval has not finished", fix) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(str(path), f"cannot be read ({e})", fix) from None
    skills = {e.name: e.skills[0] for e in spec.experts if e.skills}
    if not skills:
        raise UserError(str(eval_dir / "spec.json"), "no expert of the eval's spec has `skills`",
                        "give the experts skills = [...] and run the eval again", "experts")
    out, passed = [], 0
    for q in questions:
        right = [name for name in spec.expert_names if q.get("arms", {}).get(f"single:{name}", {}).get("correct")]
        singles = [a for a in q.get("arms", {}) if a.startswith("single:")]
        skilled = [name for name in right if name in skills]
        if not skilled or len(right) == len(singles):
            passed += 1
            continue
        rec = {"request": q["question"], "skill": skills[skilled[0]]}
        out.append(rec | ({"node": node} if node else {}))
    return out, passed


def embedded(records: Records, model: str, base_dir: Path, where: str) -> tuple[Shard, np.ndarray | None]:
    """The records as a data set: unit-length embeddings (float64) and class numbers (records.classes order);
    and each record's node number (sorted names), if the records say."""
    from swarm_hpc.knowledge.embed import Embedder

    embedder = Embedder(model, base_dir, where=where, field="embedding_model")
    try:
        x = embedder.embed(records.requests).astype(np.float64)
    finally:
        embedder.close()
    index = {c: i for i, c in enumerate(records.classes)}
    y = np.array([index[s] for s in records.skills], np.int64)
    if records.nodes is None:
        return Shard(x, y), None
    names = sorted(set(records.nodes))
    return Shard(x, y), np.array([names.index(n) for n in records.nodes], np.int64)
