"""Voting over replies: an answer given by a strict majority wins; otherwise, among the replies that state an
answer at all, the one given most often (a plurality), and when that is tied too, the one most similar to all the
others. Answers are compared as swarm_hpc/core/answers.py reads them (the stated answer, the last number), the
way `swarm-hpc eval` grades them. (`swarm-hpc eval` showed why the plurality step: with three small experts
answering 560, 15 and a sentence without a number, "most similar" picked the sentence.)"""

from __future__ import annotations

from collections import Counter
from difflib import SequenceMatcher

from swarm_hpc.core.answers import answer_key, states_answer
from swarm_hpc.core.dialogue import Final, Reply


def tally(replies: list[Reply]) -> Final:
    answered = [r for r in replies if r.votes]
    if not answered:
        return Final("", "none", "no expert answered")
    counts = Counter(answer_key(r.public) for r in answered)
    top, n = counts.most_common(1)[0]
    if n * 2 > len(answered):
        winner = next(r for r in answered if answer_key(r.public) == top)
        return Final(winner.public, "vote", f"majority: {n} of {len(answered)} answers agree")
    if len(answered) == 1:
        return Final(answered[0].public, answered[0].expert, "only answer")
    stated = [r for r in answered if states_answer(r.public)] or answered
    ranked = Counter(answer_key(r.public) for r in stated).most_common(2)
    if len(ranked) > 1 and ranked[0][1] > ranked[1][1]:
        winner = next(r for r in stated if answer_key(r.public) == ranked[0][0])
        return Final(winner.public, "vote", f"plurality: {ranked[0][1]} of {len(answered)} answers agree; no majority")
    if len(stated) == 1:
        return Final(stated[0].public, stated[0].expert, f"the only stated answer of {len(answered)}")

    def closeness(r: Reply) -> float:
        return sum(SequenceMatcher(None, answer_key(r.public), answer_key(o.public)).ratio()
                   for o in stated if o is not r) / (len(stated) - 1)

    best = max(stated, key=closeness)
    return Final(best.public, best.expert, f"most similar to the others (mean similarity {closeness(best):.2f}); no majority")
