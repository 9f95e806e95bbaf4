"""Chunking: whole sentences, overlap, exact source offsets (unit tests and hypothesis properties)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_hpc.knowledge.chunks import chunk_text, sentences

DOC = """# Power

The Raspberry Pi 5 needs a 5 V, 5 A supply. A weaker one works, but USB ports then give less current!
Is 3 A enough? Only without USB devices.

- The official supply is USB-C.
- It negotiates 5 A over USB PD.

## Cooling
An active cooler keeps it from throttling."""


def test_sentences_follow_punctuation_paragraphs_and_markdown():
    got = [DOC[s:e] for s, e in sentences(DOC)]
    assert got == ["# Power", "The Raspberry Pi 5 needs a 5 V, 5 A supply.",
                   "A weaker one works, but USB ports then give less current!", "Is 3 A enough?",
                   "Only without USB devices.", "- The official supply is USB-C.", "- It negotiates 5 A over USB PD.",
                   "## Cooling", "An active cooler keeps it from throttling."]


def test_chunks_keep_sentences_whole_and_overlap():
    chunks = chunk_text(DOC, "docs/pi5.md", max_chars=120, overlap_chars=60)
    assert [c.position for c in chunks] == list(range(len(chunks))) and len(chunks) > 2
    for c in chunks:
        assert c.source == "docs/pi5.md" and c.text == DOC[c.start:c.end] and len(c.text) <= 120
    spans = sentences(DOC)
    for s, e in spans:   # every sentence lies whole in a chunk
        assert any(c.start <= s and e <= c.end for c in chunks), DOC[s:e]
    for c in chunks:     # and a chunk begins and ends at sentence boundaries
        assert c.start in {s for s, _ in spans} and c.end in {e for _, e in spans}
    assert any(b.start < a.end for a, b in itertools.pairwise(chunks))   # overlap
    assert chunks[0].text.startswith("# Power\n\nThe Raspberry Pi 5 needs")


def test_a_sentence_longer_than_a_chunk_is_cut_at_spaces():
    text = "word " * 100 + "x" * 250 + ". Short one."
    chunks = chunk_text(text, "a.txt", max_chars=100, overlap_chars=20)
    assert all(len(c.text) <= 100 and c.text == text[c.start:c.end] for c in chunks)
    assert all(not c.text.startswith(" ") and not c.text.endswith(" ") for c in chunks)
    assert "x" * 100 in {c.text for c in chunks} and chunks[-1].text.endswith("Short one.")


def test_empty_text_and_bad_sizes():
    assert chunk_text("", "e.md") == [] and chunk_text(" \n\n \t", "e.md") == []
    with pytest.raises(ValueError):
        chunk_text("a", "x", max_chars=10, overlap_chars=10)


words = st.sampled_from(["Pi", "power", "5V", "node", "cluster", "a", "the", "voltage", "x" * 30, "#", "-", "1."])
seps = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", "\n", "\n\n", ".\n", "\n- ", "\n# ", "\t"])
texts = st.lists(st.tuples(words, seps), max_size=120).map(lambda ws: "".join(w + s for w, s in ws))


@settings(max_examples=150, deadline=None)
@given(texts, st.integers(20, 300), st.floats(0, 0.9))
def test_chunk_properties(text, max_chars, overlap):
    overlap_chars = int(max_chars * overlap)
    chunks = chunk_text(text, "f.md", max_chars, overlap_chars)
    spans = sentences(text)
    for c in chunks:
        assert c.text == text[c.start:c.end] and 0 < len(c.text) <= max_chars
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start and a.end < b.end             # always moving on
        assert b.start >= a.end or a.end - b.start <= overlap_chars
    for s, e in spans:
        if e - s <= max_chars:                                  # a sentence that fits is whole in some chunk
            assert any(c.start <= s and e <= c.end for c in chunks)
    covered = set()                                             # no text is lost
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for s, e in spans for i in range(s, e) if not text[i].isspace())
