"""Retrieved passages in a conversation (issue 12): what travels with a turn, how it is shown to the expert, and
how many of them fit.

Rank 0 retrieves the passages for each expert once, at the start of a run (swarm_hpc/knowledge/reader.py, behind
the `Reader` interface here), records them in the task's transcript record and sends them with every turn of that
expert. The expert keeps as many as fit its context, counted with its own tokenizer (`fit_passages`), numbers
them [1], [2], ... and puts them at the end of its system prompt (`with_passages`): the same text in every turn,
so the prompt cache keeps them evaluated. Its reply's record says which it was given (`Given.as_record`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from swarm_hpc.core.spec import ExpertSpec

SHARE = 0.5   # passages take at most this share of an expert's n_ctx: the conversation keeps the rest
HEADER = ("Passages from the documents (they may hold facts you do not know). Use them, and cite each one you use "
          "by its number, like [1]:")


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk: `id` is "#<chunk>" in the default index, "<collection>#<chunk>" in a collection."""

    id: str
    source: str     # the file's path as given to `swarm-hpc index build`
    score: float    # cosine similarity to the query
    text: str

    def as_record(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "score": round(self.score, 4), "text": self.text}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Passage:
        return cls(str(r["id"]), str(r["source"]), float(r["score"]), str(r["text"]))


class Reader(Protocol):
    """What retrieves each expert's passages (swarm_hpc/knowledge/reader.py: Library)."""

    def retrieve(self, query: str, experts: Sequence[ExpertSpec]) -> dict[str, list[Passage]]:
        """{expert name: its passages, best first} (an expert with no index is left out)."""
        ...


def retrieve_once(task_record: dict[str, Any] | None, reader: Reader | None, query: str,
                  experts: Sequence[ExpertSpec]) -> dict[str, list[dict[str, Any]]]:
    """Each expert's passages for a run, as the task record keeps them ({expert: [{id, source, score, text}]}):
    retrieved for `query`, or, on resume (`task_record`: the run's task record), the ones it lists, so that the
    prompts stay those of the first rounds. Both engines call this before their first step."""
    if task_record is not None:
        return dict(task_record.get("retrieved") or {})
    if reader is None:
        return {}
    return {name: [p.as_record() for p in ps] for name, ps in reader.retrieve(query, experts).items()}


def by_expert(retrieved: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[Passage, ...]]:
    return {name: tuple(Passage.from_record(r) for r in rs) for name, rs in retrieved.items()}


def retrieved_line(retrieved: dict[str, list[dict[str, Any]]]) -> str:
    """The live line: `knowledge: 6 passage(s) retrieved for 2 expert(s) (alice 3, bob 3)`."""
    return (f"knowledge: {sum(map(len, retrieved.values()))} passage(s) retrieved for {len(retrieved)} expert(s) "
            f"({', '.join(f'{n} {len(rs)}' for n, rs in retrieved.items())})")


@dataclass(frozen=True)
class Given:
    """Which of an expert's passages were in its prompt (numbered in this order), and which did not fit."""

    given: tuple[Passage, ...]
    cut: tuple[Passage, ...]

    def as_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passages": [{"n": n, "id": p.id, "source": p.source, "score": round(p.score, 4)}
                                            for n, p in enumerate(self.given, start=1)]}
        if self.cut:
            out["passages_cut"] = [p.id for p in self.cut]
        return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render(passages: Sequence[Passage]) -> str:
    """The block the expert reads: a header asking it to cite, then "[n] (source) text" per passage."""
    return "\n".join([HEADER, *(f"[{n}] ({p.source}) {_one_line(p.text)}" for n, p in enumerate(passages, start=1))])


def with_passages(messages: list[dict[str, str]], passages: Sequence[Passage]) -> list[dict[str, str]]:
    """`messages` with the passages at the end of the system prompt (the first message), or as it is without any."""
    if not passages or not messages:
        return list(messages)
    first = messages[0]
    if first.get("role") != "system":
        return [{"role": "system", "content": render(passages)}, *messages]
    return [{**first, "content": f"{first['content']}\n\n{render(passages)}"}, *messages[1:]]


def fit_passages(passages: Sequence[Passage], count: Callable[[str], int], budget: int) -> Given:
    """The passages whose block fits in `budget` tokens (`count`: the expert's tokenizer), best first: each one is
    taken when the block with it still fits, else left out (a shorter one after it may still fit)."""
    given: list[Passage] = []
    cut: list[Passage] = []
    for p in passages:
        if budget > 0 and count("\n\n" + render([*given, p])) <= budget:
            given.append(p)
        else:
            cut.append(p)
    return Given(tuple(given), tuple(cut))


def passage_budget(n_ctx: int, max_tokens: int, essentials: int, share: float = SHARE) -> int:
    """Tokens the passages may take: at most `share` of n_ctx, and never the room that the system prompt, the task,
    the newest turn (`essentials` tokens together: what fitting never drops) and the answer need."""
    return max(0, min(int(share * n_ctx), n_ctx - max_tokens - essentials))
