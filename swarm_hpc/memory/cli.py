"""`swarm-hpc memory ...`: inspect and edit a memory store (store.py). Attach with `main.add_command(memory)`, and
`memory.add_command(search_command(by_meaning))` with the layer above's retriever by meaning (this package may not
import swarm_hpc/knowledge, which the search by meaning lives in)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path

import click

from swarm_hpc.atomic import atomic_write
from swarm_hpc.errors import UserError
from swarm_hpc.memory.retrieval import LexicalRetriever, RetrieverFor
from swarm_hpc.memory.store import Fact, Store

STORE = click.argument("store", type=click.Path(path_type=Path))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def memory() -> None:
    """The swarm's memory across jobs: a store folder of facts (a spec names it with `[memory] store`).

    \b
    Examples:
      swarm-hpc memory add memory "The lab's printer is on floor 3."
      swarm-hpc memory list memory
      swarm-hpc memory search memory "where is the printer"
      swarm-hpc memory forget memory 4
      swarm-hpc memory export memory --out facts.jsonl
    """


def _line(f: Fact) -> str:
    when = datetime.fromtimestamp(f.created).strftime("%Y-%m-%d %H:%M")
    return f"{f.id:>5}  {when}  {f.source:<24.24}  {f.text}"


@memory.command()
@STORE
@click.argument("text")
@click.option("--source", default="user", show_default=True, help="Where the fact comes from.")
def add(store: Path, text: str, source: str) -> None:
    """Teach the store one fact (TEXT); makes the store when it does not exist. Prints the fact's id."""
    with Store(store) as s:
        click.echo(s.add(text, source).id)


@memory.command("list")
@STORE
@click.option("--json", "as_json", is_flag=True, help="One JSON object per fact.")
def list_(store: Path, as_json: bool) -> None:
    """Every fact: id, when, source, text."""
    with Store(store, create=False) as s:
        for f in s.all():
            click.echo(json.dumps(f.as_json(), ensure_ascii=False) if as_json else _line(f))


@memory.command()
@STORE
@click.argument("ids", nargs=-1, required=True, type=int)
def forget(store: Path, ids: tuple[int, ...]) -> None:
    """Remove the facts with these IDS (see `list`)."""
    with Store(store, create=False) as s:
        missing = [i for i in ids if not s.get([i])]
        if missing:
            raise UserError(str(store), f"no fact has id {missing[0]}", "see the ids with `swarm-hpc memory list`")
        for i in ids:
            s.forget(i)
    click.echo(f"forgot {len(ids)} fact(s)")


@memory.command()
@STORE
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file (whole or not at all) instead of stdout.")
def export(store: Path, out: Path | None) -> None:
    """Every fact as JSON Lines (id, text, source, created)."""
    with Store(store, create=False) as s:
        text = "".join(json.dumps(f.as_json(), ensure_ascii=False) + "\n" for f in s.all())
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        atomic_write(out, text)
    except OSError as e:
        raise UserError(str(out), f"cannot write the export: {e.strerror}", "give a file in a folder you can write to") from None


ByMeaning = Callable[[Callable[[str], None]], AbstractContextManager[RetrieverFor]]


def search_command(by_meaning: ByMeaning | None = None) -> click.Command:
    """`memory search`, ranking with what `by_meaning(say)` gives (swarm_hpc/cli.py: knowledge/recall.py's Recall,
    which says on stderr when it falls back to BM25), or by words with --bm25 or without `by_meaning`."""

    @click.command()
    @STORE
    @click.argument("query")
    @click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="How many facts.")
    @click.option("--bm25", is_flag=True, help="Rank by the words they share with QUERY (SQLite FTS5's BM25) "
                  "instead of by meaning (all-MiniLM-L6-v2 embeddings).")
    def search(store: Path, query: str, k: int, bm25: bool) -> None:
        """The facts a run about QUERY would recall, best first.

        By meaning where the bundled minilm is installed (it embeds each fact once, on the first search that finds
        it without a vector: a thousand short facts took 13 s the first time here, 22 ms after), else by words."""
        with Store(store, create=False) as s, (
                nullcontext(LexicalRetriever) if bm25 or by_meaning is None
                else by_meaning(lambda line: click.echo(line, err=True))) as recall:
            for f in recall(s).search(query, k):
                click.echo(_line(f))

    return search
