"""Token counts on rank 0 for what an expert rank will be sent: the model's own tokenizer (a vocabulary-only
llama.cpp load, no weights) and the same prompt rendering as swarm_hpc/expert.py."""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from swarm_hpc.experts.llama import _quiet_stderr, chat_formatter, plain_prompt
from swarm_hpc.experts.models import ResolvedModel

_lock = threading.Lock()


@lru_cache(maxsize=8)
def _vocab(path: str) -> Any:
    from llama_cpp import Llama

    with _quiet_stderr():
        return Llama(model_path=path, vocab_only=True, verbose=False)


class PromptCounter:
    """Counts the prompt tokens of a chat exactly as the expert's LlamaExpert.render() makes them."""

    def __init__(self, model: ResolvedModel):
        self.model = model
        with _lock:
            self.llm = _vocab(str(model.path))
        self.formatter = chat_formatter(self.llm, model.chat_format)

    def count(self, messages: list[dict[str, str]]) -> int:
        if self.formatter is None:
            return len(self.llm.tokenize(plain_prompt(messages).encode("utf-8"), add_bos=True, special=True))
        result = self.formatter(messages=messages)
        return len(self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))
