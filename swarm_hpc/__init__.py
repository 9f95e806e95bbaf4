"""swarm-hpc: swarms of small local LLMs (llama.cpp experts on MPI ranks) as an HPC batch workload."""

__version__ = "0.1.0"
