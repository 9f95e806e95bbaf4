"""The node's memory bandwidth, measured by the benchmark itself: the best of a few large numpy copies.

Generating one token reads (about) every weight once, so `bandwidth / model bytes` bounds generation speed;
the report shows `tok/s x model bytes / bandwidth`, the share of that bound a model reaches. A copy reads and
writes each byte, counted as 2 x size (as STREAM's copy does). With several threads, each copies its own slice
(numpy releases the GIL while copying), as llama.cpp's threads share the weights.
"""

from __future__ import annotations

import threading
import time

import numpy as np

MB = 1024 * 1024


def measure_bandwidth(size_mb: int = 256, threads: int = 1, repeats: int = 5) -> float:
    """Bytes per second of the fastest of `repeats` copies of a `size_mb` array (src and dst both touched first)."""
    n = size_mb * MB // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.zeros(n, dtype=np.float64)
    bounds = [(k * n // threads, (k + 1) * n // threads) for k in range(threads)]
    best = 0.0
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            if threads == 1:
                np.copyto(dst, src)
            else:
                workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
            dt = time.perf_counter() - t0
            if dt > 0:
                best = max(best, 2 * src.nbytes / dt)
    finally:
        del src, dst
    return best
