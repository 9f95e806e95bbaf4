"""Running swarms as SLURM jobs: job scripts rendered from templates, submission and monitoring."""
