"""`swarm-hpc eval`: answer quality as a measured result. questions.py (what is asked), arms.py (the ways of
answering compared), plan.py (the eval folder), engine.py (rank 0's loop), results.py (grading, intervals),
plot.py. Grading rules: swarm_hpc/core/answers.py."""
