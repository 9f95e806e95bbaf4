"""Memory across jobs (`[memory] store`) for one run, whichever engine runs it (core/native.py, autogen/runner.py):
the stored facts most relevant to the task, recalled once into every expert's system prompt, and at the end what
the run teaches the store (its final answer, and the blackboard's entries).

A resumed run takes the facts its task record lists (`recalled`, `recalled_by`), so its prompts are the ones its
first rounds had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from swarm_hpc.core import report
from swarm_hpc.core.spec import SwarmSpec
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor
from swarm_hpc.memory.store import Store


class JobMemory:
    """`recall` gives the store its retriever (knowledge/recall.py's, by meaning, handed down from the layer that
    starts the run; BM25 without it)."""

    def __init__(self, spec: SwarmSpec, run_dir: Path, recall: RetrieverFor = LexicalRetriever,
                 say: Callable[[str], None] = report.say):
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.recall = recall
        self.say = say
        self.recalled: list[dict[str, Any]] = []   # [{id, text}]
        self.recalled_by = ""                      # the retriever's name: "minilm", "bm25"

    @property
    def facts(self) -> list[str]:
        return [f["text"] for f in self.recalled]

    def store(self) -> Store | None:
        from swarm_hpc.core.rundir import load_snapshot

        if self.spec.memory.store is None:
            return None
        _, spec_dir = load_snapshot(self.run_dir)
        path = self.spec.memory.store_path(spec_dir)
        return Store(path, str(self.run_dir / "spec.json"), "memory.store") if path else None

    def recall_once(self, task: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The facts for this run: those `task` (a resumed run's task record) lists, else the store's best."""
        if self.spec.memory.store is None or self.spec.memory.recall == 0:
            return []
        if task is not None:
            self.recalled = list(task.get("recalled") or [])
            self.recalled_by = str(task.get("recalled_by") or "bm25")   # before it was recorded, it was BM25
        else:
            store = self.store()
            assert store is not None
            with store:
                retriever = self.recall(store)
                self.recalled_by = retriever.name
                self.recalled = [{"id": f.id, "text": f.text}
                                 for f in retriever.search(self.spec.task, self.spec.memory.recall)]
        if self.recalled:
            self.say(f"memory: {len(self.recalled)} fact(s) recalled from the store ({self.recalled_by})")
        return self.recalled

    def mark(self, task_extra: dict[str, Any]) -> None:
        """Note in the task record what was recalled, for a resumed run and for the reader."""
        if self.recalled:
            task_extra["recalled"] = self.recalled
            task_extra["recalled_by"] = self.recalled_by

    def learn(self, final: str, board: Iterable[str] = ()) -> None:
        """The final answer and the blackboard's entries become facts in the store (`learn`), for later runs."""
        if self.spec.memory.store is None or not self.spec.memory.learn or not final.strip():
            return
        store = self.store()
        assert store is not None
        source = f"run {self.run_dir.name}"
        with store:
            fact = store.add(final, source=source)
            for entry in board:
                store.add(entry, source=f"{source} blackboard")
        self.say(f"memory: the final answer is fact {fact.id} in {store.folder}")
