"""Answer extraction, shared by the vote and the eval's scorer (swarm_hpc/core/answers.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm_hpc.core.answers import answer_key, answer_text, is_correct

WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=10).filter(lambda w: w not in {"an", "the"})


@pytest.mark.parametrize("reply, gold, right", [
    ("3 + 4 = 7, so she has 7 apples.", "7", True),
    ("Step 1: 12 * 3 = 36.\nStep 2: 36 - 6 = 30.\nAnswer: 30", "30", True),
    ("**Final Answer:** $1,234.50", "1234.5", True),
    ("We get \\boxed{-4}.", "-4", True),
    ("Answer: 12.0", "12", True),
    ("She has 7 apples, then buys 5 more, so 12.", "7", False),   # the last number counts
    ("Answer: 8\n\nWait, the question says 9 apples.", "9", False),  # the stated answer counts
    ("I don't know.", "4", False),
    ("Answer: Paris.", "Paris", True),
    ("Plants take in carbon dioxide from the air to make food. Answer: Carbon dioxide", "carbon dioxide", True),
    ("Plants take in oxygen, water, carbon dioxide and nitrogen from the air and soil. Answer: oxygen",
     "carbon dioxide", False),
    ("The capital of France is Paris.", "paris", True),
    ("Paris, Lyon, Marseille, Nice, Lille, Toulouse, Bordeaux and Nantes are French cities.", "Paris", False),
    ("Answer: The Pacific Ocean", "Pacific Ocean", True),
    ("Answer: Parisian", "Paris", False),
    ("", "Paris", False),
])
def test_examples(reply, gold, right):
    assert is_correct(reply, gold) is right


def test_the_vote_counts_answers_as_they_are_graded():
    assert answer_key("So 3 * 4 = 12.\nAnswer: 12") == answer_key("The answer is $12.00") == "12"
    assert answer_key("Answer: The Paris.") == answer_key("Answer: paris") == "paris"
    assert answer_text("blah\nFinal answer: 5\nmore text") == "5"


@given(st.integers(-10**9, 10**9), st.text(alphabet="abc .\n", max_size=40))
def test_a_stated_number_answer_is_read_back(n, chatter):
    reply = f"{chatter}\nAnswer: {n:,}"
    assert is_correct(reply, str(n))
    assert answer_key(reply) == str(n)


@given(st.lists(WORDS, min_size=1, max_size=4))
def test_a_stated_short_answer_is_read_back(words):
    gold = " ".join(words)
    assert is_correct(f"Let me think.\nAnswer: {gold.title()}.", gold)
