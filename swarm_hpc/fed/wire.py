"""What travels between the server (rank 0) and a client rank: flat float64 buffers (upper-case mpi4py calls, no
pickling) and their tags. Round r's global model goes out with tag 2r; a client's reply comes back with tag 2r:
a header of HEADER floats then the n_params parameters; a client whose fit or evaluate failed sends its error
text first (uint8, tag 2r+1) and a header with status != OK. STOP and BYE end the job."""

from __future__ import annotations

import numpy as np

STOP = 1  # server -> client: no more rounds (a 1-float buffer)
BYE = 1   # client -> server: stopped

# header fields of a reply
STATUS, NUM_EXAMPLES, FIT_LOSS, FIT_ACC, EVAL_LOSS, EVAL_ACC, EVAL_N, FIT_SECONDS = range(8)
HEADER = 8

OK, RAISED, BAD_SHAPE = 0, 1, 2


def model_tag(round_: int) -> int:
    return 2 * round_


def error_tag(round_: int) -> int:
    return 2 * round_ + 1


def round_of(tag: int) -> int:
    return tag // 2


def max_rounds(tag_ub: int) -> int:
    return (tag_ub - 1) // 2


def reply(n_params: int) -> np.ndarray:
    return np.zeros(HEADER + n_params, np.float64)
