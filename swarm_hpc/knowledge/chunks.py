"""Text cut into chunks for retrieval: whole sentences, overlapping, each with its source and character offsets.

A file's text is first cut into sentences: a paragraph break, a Markdown heading, list item, quote or table row,
and `.`, `!` or `?` followed by a space end one. Consecutive sentences are packed into a chunk of at most
`max_chars` characters; the next chunk starts with the last sentences of the one before that fit in
`overlap_chars`, so a passage cut at a chunk's edge is whole in one of the two. A sentence is never cut, unless
it is longer than `max_chars` alone (a table, a code block, a run without punctuation): that one is cut at
spaces, and those pieces are packed as sentences. Every chunk's text is `text[start:end]` of its source, so a
hit can be shown in place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_CHARS = 800       # about 200 word pieces of MiniLM, inside the 256 it was trained on
OVERLAP_CHARS = 200

# where a sentence ends: after . ! ? (and closing quotes or brackets) before whitespace, or at a line break
# that starts a paragraph, a Markdown heading, list item, quote, table row or code fence
_BREAK = re.compile(r"""(?<=[.!?])["')\]]*\s+|\n\s*\n\s*|\n(?=[ \t]*(?:[#>|*+-]|\d+[.)]\s|```))""")


@dataclass(frozen=True)
class Chunk:
    source: str    # the file's path as given to `index build`
    start: int     # character offsets of the chunk in the file's text: text[start:end] is the chunk
    end: int
    text: str
    position: int  # the chunk's number within its source, from 0


def sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of every sentence of `text`, without the whitespace around it."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _BREAK.finditer(text):
        spans.extend(_own_lines(text, pos, m.start()))
        pos = m.end()
    spans.extend(_own_lines(text, pos, len(text)))
    return spans


def _own_lines(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The span, trimmed, with a leading heading or table row line made a sentence of its own."""
    for s, e in _trimmed(text, start, end):
        while s < e and text[s] in "#|" and (nl := text.find("\n", s, e)) != -1:
            yield from _trimmed(text, s, nl)
            s = nl + 1
            while s < e and text[s].isspace():
                s += 1
        if e > s:
            yield s, e


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end


def _pieces(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """A span longer than `max_chars` cut into pieces at whitespace (or anywhere, when a word is that long)."""
    while end - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        if cut <= start:
            cut = max((i for i in range(start + 1, start + max_chars + 1) if text[i].isspace()), default=-1)
        if cut <= start:
            cut = start + max_chars
        yield from _trimmed(text, start, cut)
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if end > start:
        yield start, end


def chunk_text(text: str, source: str, max_chars: int = MAX_CHARS, overlap_chars: int = OVERLAP_CHARS) -> list[Chunk]:
    """The chunks of one file's text (see the module's docstring)."""
    if max_chars < 1 or not 0 <= overlap_chars < max_chars:
        raise ValueError("need max_chars >= 1 and 0 <= overlap_chars < max_chars")
    units = [p for s, e in sentences(text) for p in _pieces(text, s, e, max_chars)]
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        j = i + 1   # units[i:j] is the chunk: at least one unit, then as many as fit
        while j < len(units) and units[j][1] - units[i][0] <= max_chars:
            j += 1
        start, end = units[i][0], units[j - 1][1]
        chunks.append(Chunk(source, start, end, text[start:end], len(chunks)))
        if j == len(units):
            break
        # the next chunk starts with the last units of this one that fit in the overlap, and must take a new one
        k = j
        while (k - 1 > i and units[j - 1][1] - units[k - 1][0] <= overlap_chars
               and units[j][1] - units[k - 1][0] <= max_chars):
            k -= 1
        i = k
    return chunks
