"""The swarm as a service: an OpenAI-compatible HTTP endpoint on rank 0 (`swarm-hpc serve SPEC`)."""
