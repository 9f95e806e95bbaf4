"""The swarm's memory, as pure code (no MPI, no llama.cpp): what an expert keeps of a conversation that outgrows
its context (compress.py, facts.py), how far its context may grow (context.py), the facts that outlive a job
(store.py, retrieval.py) and the facts a run agreed on (blackboard.py). The experts and the engine call it;
it imports nothing else of the package but atomic.py and errors.py.
"""
