"""Federated learning as an MPI job: rank 0 is the server, every other rank a client with its own data shard.

Layers inside (each imports only those above it in this list): spec.py (the TOML spec), data.py (the digits
data set and its non-IID split into shards), model.py (numpy models on one flat parameter vector), client.py
(Flower's NumPyClient shape and the digits client), strategy.py (FedAvg, FedProx, FedAdam; update checks),
wire.py (the flat float64 messages and tags), record.py (rounds.jsonl, checkpoint, summary), prepare.py (a new
run directory), server.py and worker.py (rank 0's rounds and a client rank's loop), rank.py (the entry point),
plot.py and cli.py (`swarm-hpc fed run|show`). Nothing outside this package imports it except swarm_hpc/cli.py.
"""
