"""Retrieval over a document corpus: what experts read (issue 12). Layered just above experts/ (it embeds with a
llama.cpp model resolved there) and below mpi/ and the CLI:

- embed.py: the Embedder, llama.cpp in embedding mode on an embedding GGUF (the bundled `minilm`);
- chunks.py: text cut into chunks of whole sentences, with overlap and their source and character offsets;
- index.py: the index on disk (vectors, chunk metadata, a manifest naming the embedding model) and exact search;
- check.py and reader.py: a spec's `[knowledge]` indexes, checked before a run and opened on rank 0, where the
  Library retrieves each expert's passages (swarm_hpc/core/passages.py: how the experts read them);
- recall.py: the memory store's facts found by meaning (each embedded once, kept in the store): rank 0's Recall,
  which the layer above gives the engine, and `swarm-hpc memory search`;
- cli.py: `swarm-hpc index build` and `swarm-hpc index query`.

chunks.py and index.py are pure (numpy, no llama.cpp); only embed.py loads a model.
"""
