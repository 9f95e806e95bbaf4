"""Assemble a benchmark run: results.json and results.csv, a Markdown table (report.md), a PNG plot (plot.png),
and a comparison with an earlier run.

One row per (model, node): medians over the repetitions with their spread (half the range, in % of the
median), the node's measured bandwidth and the share of the bandwidth bound the generation reached, peak
memory next to the model's size, and the probe's accuracy. A task without a result (it failed to start, or
is still running) is a failed row, never a missing one.

Comparison (`--compare OLD`): rows are matched by model and node (or by model alone when the old run measured
it on one other node); a change in generation or prompt speed counts as faster/slower when it is larger than
the spread of either run and at least 3 %.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from swarm_hpc.atomic import atomic_write, atomic_write_json
from swarm_hpc.errors import UserError
from swarm_hpc.ops.benchmark import probe
from swarm_hpc.ops.benchmark.plan import RAW, Plan, load_plan
from swarm_hpc.ops.benchmark.results import ERROR, OK, ModelResult, Stat

MB = 1_000_000  # decimal megabytes, as the README gives model sizes
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
PLOT_PNG = "plot.png"
MIN_CHANGE_PCT = 3.0


@dataclass(frozen=True)
class Row:
    """One (model, node) line of the report; None where a failed model has no figure."""

    model: str
    node: str
    status: str
    error: str = ""
    threads: int = 0
    n_ctx: int = 0
    reps: int = 0
    prompt_tokens: int = 0
    gen_tokens: int = 0
    load_s: float | None = None
    load_s_min: float | None = None
    load_s_max: float | None = None
    prompt_tok_s: float | None = None
    prompt_tok_s_min: float | None = None
    prompt_tok_s_max: float | None = None
    gen_tok_s: float | None = None
    gen_tok_s_min: float | None = None
    gen_tok_s_max: float | None = None
    bw_ratio: float | None = None
    bw_ratio_min: float | None = None
    bw_ratio_max: float | None = None
    bandwidth_gb_s: float | None = None
    model_mb: float | None = None
    peak_mb: float | None = None
    probe_correct: int | None = None
    probe_total: int | None = None
    probe_accuracy: float | None = None
    chat_format: str = ""
    arch: str = ""
    cpu: str = ""
    ref: str = ""

    def stat(self, key: str) -> Stat | None:
        med = getattr(self, key)
        if med is None:
            return None
        lo, hi = getattr(self, f"{key}_min"), getattr(self, f"{key}_max")
        return Stat(med, med if lo is None else lo, med if hi is None else hi, self.reps)

    @classmethod
    def from_result(cls, r: ModelResult) -> Row:
        base: dict[str, Any] = {"model": r.run.name, "node": r.node, "status": r.status, "error": r.error,
                                "threads": r.run.threads, "n_ctx": r.run.n_ctx, "reps": r.run.reps,
                                "cpu": r.cpu, "ref": r.run.model}
        if r.model_bytes:
            base["model_mb"] = r.model_bytes / MB
        if r.bandwidth_bytes_s:
            base["bandwidth_gb_s"] = r.bandwidth_bytes_s / 1e9
        if r.peak_bytes:
            base["peak_mb"] = r.peak_bytes / MB
        m = r.measurement
        if r.status != OK or m is None:
            return cls(**base)
        for key, values in (("load_s", r.values("load_s")), ("prompt_tok_s", r.values("prompt_tok_s")),
                            ("gen_tok_s", r.values("gen_tok_s")), ("bw_ratio", r.bandwidth_ratio)):
            s = Stat.of(values)
            if s is not None:
                base.update({key: s.median, f"{key}_min": s.min, f"{key}_max": s.max})
        base.update({"n_ctx": m.n_ctx, "reps": len(m.reps),
                     "prompt_tokens": m.reps[0].prompt_tokens if m.reps else 0,
                     "gen_tokens": m.reps[0].gen_tokens if m.reps else 0,
                     "probe_correct": sum(a.correct for a in m.probe), "probe_total": len(m.probe),
                     "probe_accuracy": m.probe_accuracy, "chat_format": m.chat_format, "arch": m.arch})
        return cls(**base)

    def flat(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_flat(cls, d: dict[str, Any]) -> Row:
        """From a results.json row or a results.csv line (strings converted back)."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if isinstance(v, str) and f.type not in ("str",):
                if v == "":
                    v = None
                elif "int" in str(f.type):
                    v = int(float(v))
                else:
                    v = float(v)
            out[f.name] = v
        for key in ("model", "node", "status"):
            if key not in out:
                raise ValueError(f"no `{key}` column")
        return cls(**out)

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.node}"


@dataclass(frozen=True)
class Assembled:
    run_dir: Path
    plan: Plan
    results: list[ModelResult]
    rows: list[Row]

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status != OK]


# --- collecting ------------------------------------------------------------------------------------------------

def collect(run_dir: Path) -> Assembled:
    """Every task's result, in plan order; a task without a result file becomes a failed row."""
    run_dir = Path(run_dir)
    plan = load_plan(run_dir)
    results = []
    for task in plan.tasks:
        files = sorted((run_dir / RAW).glob(f"{task.index:03d}-*.json"))
        if files:
            try:
                results.append(ModelResult.read(files[-1]))
                continue
            except (ValueError, TypeError, KeyError) as e:
                reason = f"unreadable result file {files[-1].name}: {e}"
        else:
            if plan.mode == "slurm":
                reason = f"no result: the array task has not finished or died (see logs/*_{task.index}.out)"
            else:
                reason = "no result: the run was interrupted before this model finished"
        run = plan.runs[task.model]
        results.append(ModelResult(index=task.index, run=run, node=task.node or "?", status=ERROR, error=reason))
    return Assembled(run_dir, plan, results, [Row.from_result(r) for r in results])


def load_rows(path: Path) -> tuple[list[Row], str]:
    """Rows of an earlier run: its folder, its results.json or its results.csv. Returns (rows, its name)."""
    path = Path(path)
    where = str(path)
    if path.is_dir():
        if (path / RESULTS_JSON).exists():
            path = path / RESULTS_JSON
        elif (path / "plan.json").exists():
            return collect(path).rows, where
        else:
            raise UserError(where, "is not a benchmark run directory (no results.json or plan.json)",
                            "give a folder made by `swarm-hpc bench models`, or its results.json or results.csv")
    if not path.exists():
        raise UserError(where, "file not found", "give an earlier run's folder, results.json or results.csv")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            rows = [Row.from_flat(d) for d in csv.DictReader(io.StringIO(text))]
        else:
            rows = [Row.from_flat(d) for d in json.loads(text)["rows"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(where, f"not a benchmark result file ({e})",
                        "give an earlier run's results.json or results.csv") from None
    return rows, where


# --- Markdown --------------------------------------------------------------------------------------------------

def _num(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_stat(s: Stat | None) -> str:
    if s is None:
        return "–"
    return f"{_num(s.median)} ±{s.spread_pct:.0f}%" if s.n > 1 else _num(s.median)


def markdown_table(rows: list[Row]) -> str:
    head = ["model", "node", "threads", "n_ctx", "load s", "prompt tok/s", "gen tok/s", "gen / BW bound",
            "BW GB/s", "peak MB", "model MB", "probe", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 10 + ["---"]) + "|"]
    for r in rows:
        probe_cell = f"{r.probe_correct}/{r.probe_total}" if r.probe_total else "–"
        cells = [r.model, r.node, str(r.threads), str(r.n_ctx), fmt_stat(r.stat("load_s")),
                 fmt_stat(r.stat("prompt_tok_s")), fmt_stat(r.stat("gen_tok_s")), fmt_stat(r.stat("bw_ratio")),
                 _num(r.bandwidth_gb_s) if r.bandwidth_gb_s else "–", f"{r.peak_mb:.0f}" if r.peak_mb else "–",
                 _num(r.model_mb) if r.model_mb else "–", probe_cell, "ok" if r.status == OK else "**failed**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def markdown(a: Assembled, comparison: str = "") -> str:
    p = a.plan
    run = p.runs[0] if p.runs else None
    nodes = sorted({(r.node, r.cpu) for r in a.results if r.node != "?" and r.cpu})
    settings = (f"{run.reps} repetitions, a {run.prompt_tokens}-token prompt, {run.max_tokens} generated tokens "
                f"(end of text banned), a probe of {len(probe.QUESTIONS)} exact-answer questions" if run else "")
    out = [f"# Benchmark {a.run_dir.name}", "",
           f"`{p.config_path}`: {p.mode} run of {p.created}; {settings}.",
           "", "Nodes: " + "; ".join(f"{n} ({cpu})" for n, cpu in nodes) if nodes else "", "",
           "Medians over the repetitions, ± half their range. *gen / BW bound* = generated tok/s × model bytes / the "
           "node's copy bandwidth (1.0 is the memory-bandwidth limit). *load s* includes the first (cold) load.", "",
           markdown_table(a.rows), ""]
    if a.failed:
        out += ["Failed:", ""] + [f"- **{r.model}** on {r.node}: {r.error}" for r in a.failed] + [""]
    if comparison:
        out += [comparison, ""]
    return "\n".join(out)


# --- comparison ------------------------------------------------------------------------------------------------

def _match(new: Row, old_rows: list[Row]) -> Row | None:
    same = [o for o in old_rows if o.model == new.model and o.node == new.node and o.status == OK]
    if same:
        return same[0]
    by_model = [o for o in old_rows if o.model == new.model and o.status == OK]
    return by_model[0] if len(by_model) == 1 else None


def verdict(new: Row, old: Row, key: str) -> str:
    ns, os_ = new.stat(key), old.stat(key)
    if ns is None or os_ is None or not os_.median:
        return "–"
    pct = 100.0 * (ns.median - os_.median) / os_.median
    noise = max(MIN_CHANGE_PCT, ns.spread_pct, os_.spread_pct)
    if abs(pct) <= noise:
        return "same"
    return "faster" if pct > 0 else "slower"


def compare(rows: list[Row], old_rows: list[Row], old_name: str) -> tuple[str, list[dict[str, Any]]]:
    """A Markdown section and its records: each measured model against the same model in the old run."""
    lines = [f"## Compared with {old_name}", "",
             "| model | node | gen tok/s old → new | change | prompt tok/s old → new | change | load s old → new "
             "| peak MB old → new | probe old → new | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    records = []
    for r in rows:
        o = _match(r, old_rows)
        if r.status != OK or o is None:
            lines.append(f"| {r.model} | {r.node} | | | | | | | | {'failed now' if r.status != OK else 'new'} |")
            records.append({"model": r.model, "node": r.node, "verdict": "failed now" if r.status != OK else "new"})
            continue

        def pair(key: str, o: Any = o, r: Any = r) -> tuple[str, str]:
            a, b = getattr(o, key), getattr(r, key)
            if a is None or b is None:
                return "–", ""
            ch = f"{100.0 * (b - a) / a:+.1f}%" if a else ""
            return f"{_num(a)} → {_num(b)}", ch

        g, gch = pair("gen_tok_s")
        pp, ppch = pair("prompt_tok_s")
        ld, _ = pair("load_s")
        pk, _ = pair("peak_mb")
        probe_cell = f"{o.probe_correct}/{o.probe_total} → {r.probe_correct}/{r.probe_total}"
        v_gen, v_pp = verdict(r, o, "gen_tok_s"), verdict(r, o, "prompt_tok_s")
        words = f"generation {v_gen}, prompt {v_pp}" + ("" if o.node == r.node else f" (old run on {o.node})")
        lines.append(f"| {r.model} | {r.node} | {g} | {gch} | {pp} | {ppch} | {ld} | {pk} | {probe_cell} | {words} |")
        keys = ("gen_tok_s", "prompt_tok_s", "load_s", "peak_mb", "probe_accuracy")
        records.append({"model": r.model, "node": r.node, "old_node": o.node, "verdict_gen": v_gen,
                        "verdict_prompt": v_pp, **{f"{k}_old": getattr(o, k) for k in keys},
                        **{f"{k}_new": getattr(r, k) for k in keys}})
    return "\n".join(lines), records


# --- plot ------------------------------------------------------------------------------------------------------

def plot(rows: list[Row], path: Path, title: str, old_rows: list[Row] | None = None) -> None:
    """Four panels of horizontal bars, one bar per (model, node): generation and prompt speed (min–max error
    bars; the old run as black marks), share of the bandwidth bound, peak memory next to the model's size."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(str(path), "cannot draw the plot: matplotlib is not installed",
                        "pip install matplotlib (the other result files are written)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.label for r in rows]
    ys = list(range(len(rows)))
    fig, axes = plt.subplots(2, 2, figsize=(12, 2.2 + 0.55 * max(len(rows), 2) * 2), constrained_layout=True)
    (ax_gen, ax_pp), (ax_bw, ax_mem) = axes

    def bars(ax: Any, key: str, color: str, xlabel: str) -> None:
        med, lo, hi = [], [], []
        for r in rows:
            s = r.stat(key)
            med.append(s.median if s else 0.0)
            lo.append(s.median - s.min if s else 0.0)
            hi.append(s.max - s.median if s else 0.0)
        ax.barh(ys, med, xerr=[lo, hi], color=color, capsize=3)
        positive = [m for m in med if m > 0]
        if key != "bw_ratio" and positive and max(positive) > 30 * min(positive):
            ax.set_xscale("log")  # tiny test models next to real ones
            xlabel += ", log scale"
        ax.set_xlabel(xlabel)
        ax.set_yticks(ys, labels)
        ax.invert_yaxis()
        for y, r in zip(ys, rows, strict=True):
            if r.status != OK:
                ax.text(0, y, "  failed", va="center", color="crimson")
        if old_rows:
            pts = [(getattr(o, key), y) for y, r in zip(ys, rows, strict=True) if (o := _match(r, old_rows)) and getattr(o, key)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "k|", markersize=14, mew=2, label="previous run")
                ax.legend(loc="lower right", fontsize=8)

    bars(ax_gen, "gen_tok_s", "tab:blue", "generation tok/s (median, min–max)")
    for y, r in zip(ys, rows, strict=True):
        if r.probe_total:
            ax_gen.text(r.gen_tok_s_max or r.gen_tok_s or 0, y, f"  probe {r.probe_correct}/{r.probe_total}",
                        va="center", fontsize=8)
    ax_gen.margins(x=0.25)
    bars(ax_pp, "prompt_tok_s", "tab:orange", "prompt tok/s (median, min–max)")
    bars(ax_bw, "bw_ratio", "tab:green", "gen tok/s × model bytes / bandwidth")
    ax_bw.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    ax_bw.set_xlim(0, max(1.1, max((r.bw_ratio_max or 0) for r in rows) * 1.1))
    peak = [r.peak_mb or 0 for r in rows]
    size = [r.model_mb or 0 for r in rows]
    ax_mem.barh(ys, peak, color="tab:purple", alpha=0.5, label="peak memory (VmHWM)")
    ax_mem.barh(ys, size, color="tab:purple", height=0.4, label="model file")
    ax_mem.set_yticks(ys, labels)
    ax_mem.invert_yaxis()
    ax_mem.set_xlabel("MB")
    ax_mem.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


# --- writing ---------------------------------------------------------------------------------------------------

def write_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[f.name for f in fields(Row)], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.flat().items()})
    return buf.getvalue()


def assemble(run_dir: Path, compare_with: Path | None = None) -> tuple[Assembled, str]:
    """Write results.json, results.csv, report.md and plot.png into RUN_DIR; returns the results and the
    comparison's Markdown section ("" without `compare_with`)."""
    old_rows, old_name = (load_rows(compare_with) if compare_with is not None else (None, ""))
    a = collect(run_dir)
    section = ""
    records: list[dict[str, Any]] = []
    if old_rows is not None:
        section, records = compare(a.rows, old_rows, old_name)
    md = markdown(a, section)
    meta = {"run_dir": str(a.run_dir), "config": a.plan.config_path, "mode": a.plan.mode, "created": a.plan.created,
            "assembled": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "measured": len(a.rows) - len(a.failed),
            "failed": len(a.failed)}
    doc: dict[str, Any] = {"meta": meta, "rows": [r.flat() for r in a.rows],
                           "results": [r.to_dict() for r in a.results]}
    if old_rows is not None:
        doc["comparison"] = {"with": old_name, "rows": records}
    atomic_write(a.run_dir / RESULTS_CSV, write_csv(a.rows))
    atomic_write(a.run_dir / REPORT_MD, md)
    atomic_write_json(a.run_dir / RESULTS_JSON, doc)
    plot(a.rows, a.run_dir / PLOT_PNG, f"swarm-hpc bench: {a.run_dir.name}", old_rows)
    return a, section
