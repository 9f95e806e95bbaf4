"""The shared blackboard: facts and decisions the swarm agreed on, kept by rank 0 within a token budget.

An expert puts an entry on the board with a line "@board: text" (the same syntax as a private note); from
the next round on, every expert's prompt shows the whole board. The board is bounded: when its entries pass
`budget_tokens`, the oldest go (a decision replaces what it settles; the key facts of compression keep the
early ones). Tokens are counted as about four characters each: rank 0 serves experts with different
tokenizers and the budget only has to be about right. Pure data: the engine writes `as_json()` to the run
directory (blackboard.json), and a resumed run rebuilds the board by replaying the replies.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from swarm_hpc.memory.facts import normal

BOARD = "board"
POST_RE = re.compile(r"^[ \t>*-]*@board[ \t]*[:,][ \t]*(.+?)[ \t]*$", re.MULTILINE | re.IGNORECASE)
HEAD = "Blackboard (what the swarm agreed on so far):"


def approx_tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))


@dataclass(frozen=True)
class Entry:
    id: str        # "<reply id>@board", e.g. r3.alice@board (a second post of one reply: r3.alice@board2)
    by: str        # the expert who posted it
    text: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def posts(content: str) -> list[str]:
    """The "@board: text" lines of a reply."""
    return [m.group(1) for m in POST_RE.finditer(content)]


class Blackboard:
    def __init__(self, budget_tokens: int):
        self.budget_tokens = budget_tokens
        self.entries: list[Entry] = []
        self.dropped = 0    # entries that left the board to keep it within its budget

    def post(self, reply_id: str, by: str, texts: list[str]) -> list[Entry]:
        """Add a reply's posts (a text already on the board is not added again); returns the new entries."""
        have = {normal(e.text) for e in self.entries}
        added = []
        for i, text in enumerate(texts):
            if normal(text) in have or not text.strip():
                continue
            have.add(normal(text))
            entry = Entry(f"{reply_id}@{BOARD}{i + 1 if i else ''}", by, text.strip())
            self.entries.append(entry)
            added.append(entry)
        while len(self.entries) > 1 and self.tokens() > self.budget_tokens:
            self.entries.pop(0)
            self.dropped += 1
        return added

    def tokens(self) -> int:
        return sum(approx_tokens(f"- {e.by}: {e.text}") for e in self.entries)

    def render(self) -> str:
        return HEAD + "\n" + "\n".join(f"- {e.by}: {e.text}" for e in self.entries) if self.entries else ""

    def as_json(self) -> dict[str, Any]:
        return {"budget_tokens": self.budget_tokens, "tokens": self.tokens(), "dropped": self.dropped,
                "entries": [e.as_json() for e in self.entries]}
