"""Voting over replies: an answer given by a strict majority wins, otherwise the answer most similar to all the
others. Answers are compared as swarm_hpc/core/answers.py reads them (the stated answer, the last number), the
way `swarm-hpc eval` grades them."""

from __future__ import annotations

from collections import Counter
from difflib import SequenceMatcher

from swarm_hpc.core.answers import answer_key
from swarm_hpc.core.dialogue import Final, Reply


def tally(replies: list[Reply]) -> Final:
    answered = [r for r in replies if r.answered and r.public]
    if not answered:
        return Final("", "none", "no expert answered")
    counts = Counter(answer_key(r.public) for r in answered)
    top, n = counts.most_common(1)[0]
    if n * 2 > len(answered):
        winner = next(r for r in answered if answer_key(r.public) == top)
        return Final(winner.public, "vote", f"majority: {n} of {len(answered)} answers agree")
    if len(answered) == 1:
        return Final(answered[0].public, answered[0].expert, "only answer")

    def closeness(r: Reply) -> float:
        return sum(SequenceMatcher(None, answer_key(r.public), answer_key(o.public)).ratio()
                   for o in answered if o is not r) / (len(answered) - 1)

    best = max(answered, key=closeness)
    return Final(best.public, best.expert, f"most similar to the others (mean similarity {closeness(best):.2f}); no majority")
