"""One model in one process: load time, prompt and generation speed per repetition, the probe, peak memory.

Run by runner.py as `python -m swarm_hpc.ops.benchmark.measure JOB_JSON OUT_JSON`, one process per model, so that a
crash or a memory blow-up stays contained and the peak memory (VmHWM) is this model's own. Progress goes to
stdout as `PROGRESS {json}` lines; the result (or the error) is written atomically to OUT_JSON.

Every repetition loads the model afresh (the first load is the cold one), evaluates a fixed prompt of exactly
`prompt_tokens` tokens and generates `max_tokens` tokens greedily with end-of-sequence banned, so every model
generates the same number of tokens. Speeds are llama.cpp's own timers (prompt evaluation and per-token
decoding), as `llama_perf_context` reports them. The probe runs once, greedily, on the last repetition's model.
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from swarm_hpc.atomic import atomic_write_json
from swarm_hpc.experts.llama import PLAIN, LlamaExpert
from swarm_hpc.experts.models import ResolvedModel
from swarm_hpc.ops.benchmark import probe
from swarm_hpc.ops.benchmark.config import ModelRun
from swarm_hpc.ops.benchmark.results import Measurement, ProbeAnswer, RepResult

# The fixed prompt for the speed measurement: plain English text, repeated as needed and cut to prompt_tokens.
SPEED_TEXT = (
    "A small cluster of single-board computers sits on a shelf in the corner of the workshop. Each board runs "
    "its own copy of a language model, and the boards pass notes to each other over the network while they "
    "work on a shared question. The owner measures how fast each model reads a prompt and how fast it writes "
    "an answer, because memory bandwidth, not arithmetic, decides how quickly a small board can generate text. "
    "Here is the story of how that cluster was built, one board at a time, starting with"
)

PROGRESS = "PROGRESS "


@dataclass(frozen=True)
class MeasureJob:
    """What the model process is asked to measure: the settings and the resolved model file."""

    run: ModelRun
    path: str
    chat_format: str | None   # None: the model's own template (falls back to "plain" when it has none)

    def to_json(self) -> str:
        return json.dumps({"run": self.run.to_dict(), "path": self.path, "chat_format": self.chat_format})

    @classmethod
    def from_json(cls, text: str) -> MeasureJob:
        d = json.loads(text)
        return cls(ModelRun.from_dict(d["run"]), d["path"], d["chat_format"])


def print_progress(event: dict[str, Any]) -> None:
    print(PROGRESS + json.dumps(event), flush=True)


def speed_prompt(llm: Any, n_tokens: int) -> list[int]:
    """Exactly `n_tokens` tokens of SPEED_TEXT (BOS first)."""
    text = SPEED_TEXT
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    while len(tokens) < n_tokens:
        text += " " + SPEED_TEXT
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)
    return tokens[:n_tokens]


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _free(expert: LlamaExpert | None) -> None:
    """Release a model's memory now (llama.cpp's buffers), not whenever the garbage collector gets to it."""
    if expert is not None:
        expert.llm.close()
    gc.collect()


def _load(job: MeasureJob, chat_format: str | None) -> LlamaExpert:
    model = ResolvedModel(job.run.model, Path(job.path), chat_format, False)
    return LlamaExpert(job.run.name, model, n_ctx=job.run.n_ctx, threads=job.run.threads, temperature=0.0,
                       seed=1, max_tokens=job.run.probe_max_tokens)


def end_tokens(llm: Any) -> list[int]:
    """Every end-of-generation token of the vocabulary (EOS, and end-of-turn markers such as <|im_end|>)."""
    from llama_cpp import llama_cpp as C

    vocab = llm._model.vocab
    return [t for t in range(llm.n_vocab()) if C.llama_token_is_eog(vocab, t)] or [llm.token_eos()]


def one_rep(expert: LlamaExpert, run: ModelRun, banned: list[int] | None = None) -> RepResult:
    from llama_cpp import llama_cpp as C

    llm = expert.llm
    tokens = speed_prompt(llm, run.prompt_tokens)
    banned = end_tokens(llm) if banned is None else banned
    C.llama_perf_context_reset(llm.ctx)
    llm.create_completion(tokens, max_tokens=run.max_tokens, temperature=0.0, logit_bias={t: -1e9 for t in banned})
    perf = C.llama_perf_context(llm.ctx)
    pp_s, gen_s = perf.t_p_eval_ms / 1000.0, perf.t_eval_ms / 1000.0
    return RepResult(load_s=expert.load_seconds, prompt_tokens=int(perf.n_p_eval),
                     prompt_tok_s=perf.n_p_eval / pp_s if pp_s > 0 else 0.0,
                     gen_tokens=int(perf.n_eval), gen_tok_s=perf.n_eval / gen_s if gen_s > 0 else 0.0)


def run_probe(expert: LlamaExpert, run: ModelRun) -> list[ProbeAnswer]:
    answers = []
    for question, expected in probe.QUESTIONS:
        gen = expert.answer(probe.messages(question), max_tokens=run.probe_max_tokens)
        if gen.error:
            raise RuntimeError(f"the probe failed: {gen.error}")
        answers.append(ProbeAnswer(question, list(expected), gen.content, probe.is_correct(gen.content, expected)))
    return answers


def measure(job: MeasureJob, progress: Callable[[dict[str, Any]], None] = print_progress) -> Measurement:
    t0 = time.perf_counter()
    run = job.run
    chat_format = job.chat_format
    reps: list[RepResult] = []
    expert: LlamaExpert | None = None
    banned: list[int] | None = None
    for rep in range(1, run.reps + 1):
        progress({"stage": "rep", "rep": rep, "reps": run.reps})
        _free(expert)  # the previous repetition's model, before loading again
        expert = None
        try:
            expert = _load(job, chat_format)
        except ValueError as e:
            if chat_format is not None or "chat template" not in str(e):
                raise
            chat_format = PLAIN  # a base model without a template: prompt it as a Question/Answer transcript
            expert = _load(job, chat_format)
        if banned is None:
            banned = end_tokens(expert.llm)
        reps.append(one_rep(expert, run, banned))
    assert expert is not None
    progress({"stage": "probe", "questions": len(probe.QUESTIONS)})
    answers = run_probe(expert, run)
    arch = str(expert.llm.metadata.get("general.architecture", ""))
    n_ctx = int(expert.llm.n_ctx())
    return Measurement(reps=reps, probe=answers, n_ctx=n_ctx, chat_format=chat_format or "model", arch=arch,
                       peak_rss_bytes=peak_rss_bytes(), seconds=time.perf_counter() - t0)


def main(argv: list[str]) -> int:
    job_json, out = argv[0], Path(argv[1])
    try:
        m = measure(MeasureJob.from_json(job_json))
    except Exception as e:  # reported as this model's failure; the parent carries on with the others
        detail = " ".join(str(e).split()) or type(e).__name__
        atomic_write_json(out, {"status": "error", "error": f"{type(e).__name__}: {detail}",
                                "traceback": traceback.format_exc(limit=5)})
        return 1
    atomic_write_json(out, {"status": "ok", "measurement": asdict(m)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
