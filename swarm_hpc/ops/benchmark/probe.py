"""A short, fixed probe of exact-answer questions, so that speed is never shown without some sign of quality.

The questions never change (results stay comparable across runs and boards). An answer counts as correct when
its first line contains one of the expected words (case-insensitive, as a whole word): lenient on purpose, as
small models wrap a right answer in a sentence ("The capital of France is Paris.").
"""

from __future__ import annotations

import re

SYSTEM = "Answer the question with one word or one number."

QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("paris",)),
    ("What is 2 + 3?", ("5", "five")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What is the opposite of hot?", ("cold",)),
    ("Which planet do we live on?", ("earth",)),
    ("What is 10 minus 4?", ("6", "six")),
    ("What is the largest ocean on Earth?", ("pacific",)),
)


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def is_correct(answer: str, expected: tuple[str, ...] | list[str]) -> bool:
    first = answer.strip().split("\n", 1)[0].lower() if answer.strip() else ""
    return any(re.search(rf"(?<![\w.]){re.escape(word)}(?![\w]|\.\d)", first) for word in expected)
