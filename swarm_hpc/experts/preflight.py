"""Checks a spec against the files it names, before anything is launched or written.

- every expert's model resolves to a real GGUF file (bundled name or path) that has a chat template, unless
  the expert sets `chat_format`;
- every expert's n_ctx holds its system prompt plus one turn (`max_tokens`), counted with the model's own
  tokenizer (a vocabulary-only load: milliseconds, no weights read).
"""

from __future__ import annotations

from pathlib import Path

from swarm_hpc.errors import UserError
from swarm_hpc.experts.models import ResolvedModel, resolve_model
from swarm_hpc.core.spec import SwarmSpec

# what the opening turn adds around the persona: chat markers, swarm rules, the task, the instruction
_OPENING_OVERHEAD = 96


def check_spec_files(spec: SwarmSpec, base_dir: Path, where: str) -> dict[str, ResolvedModel]:
    """Resolve and check every expert's model; `base_dir` is where relative model paths start."""
    resolved: dict[str, ResolvedModel] = {}
    for i, e in enumerate(spec.experts):
        resolved[e.name] = resolve_model(e.model, base_dir, where, f"experts[{i}].model")
    vocab = {}
    for i, e in enumerate(spec.experts):
        m = resolved[e.name]
        if m.path not in vocab:
            vocab[m.path] = _vocab_model(m, where, f"experts[{i}].model")
        llm = vocab[m.path]
        fmt = e.chat_format or m.chat_format
        if fmt is None and not llm.metadata.get("tokenizer.chat_template"):
            raise UserError(where, f"model {e.model!r} has no chat template", "set chat_format = \"plain\" for a base "
                            "model, or \"chatml\"", f"experts[{i}].chat_format")
        persona = len(llm.tokenize(e.persona.encode("utf-8"), add_bos=True, special=True))
        task = len(llm.tokenize(spec.task.encode("utf-8"), add_bos=False, special=True))
        need = persona + task + _OPENING_OVERHEAD + e.max_tokens
        if need > e.n_ctx:
            fit = -(-need // 256) * 256
            raise UserError(where, f"n_ctx {e.n_ctx} is too small for the persona ({persona} tokens), the task "
                            f"({task}) and max_tokens ({e.max_tokens})",
                            f"set n_ctx to at least {fit}, or shorten the persona or max_tokens", f"experts[{i}].n_ctx")
    from swarm_hpc.experts.switching import check_switching

    check_switching(spec, base_dir, where)  # experts that serve several models: each resolves and fits the budget
    return resolved


def _vocab_model(m: ResolvedModel, where: str, field: str):
    from swarm_hpc.experts.llama import _quiet_stderr

    from llama_cpp import Llama

    try:
        with _quiet_stderr():
            return Llama(model_path=str(m.path), vocab_only=True, verbose=False)
    except Exception as e:
        raise UserError(where, f"llama.cpp cannot load {str(m.path)!r} ({type(e).__name__})",
                        "check that it is a complete GGUF model file (re-copy or re-convert it)", field) from None
