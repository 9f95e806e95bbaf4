"""Numpy models whose parameters are a list of arrays (Flower's shape) and, on the wire, one flat float64 vector:
softmax regression (W, b) or a one-hidden-layer MLP (W1, b1, W2, b2) with ReLU. Plain minibatch SGD."""

from __future__ import annotations

import numpy as np

Params = list[np.ndarray]


def init_params(kind: str, n_in: int, n_out: int, hidden: int, seed: int) -> Params:
    rng = np.random.default_rng(seed + 7)
    if kind == "softmax":
        return [np.zeros((n_in, n_out)), np.zeros(n_out)]
    return [rng.normal(0, np.sqrt(2 / n_in), (n_in, hidden)), np.zeros(hidden),
            rng.normal(0, np.sqrt(1 / hidden), (hidden, n_out)), np.zeros(n_out)]


def shapes(params: Params) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in params]


def flatten(params: Params) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.float64).ravel() for p in params])


def unflatten(flat: np.ndarray, shape_list: list[tuple[int, ...]]) -> Params:
    out, pos = [], 0
    for s in shape_list:
        n = int(np.prod(s))
        out.append(flat[pos:pos + n].reshape(s).copy())
        pos += n
    if pos != len(flat):
        raise ValueError(f"{len(flat)} numbers for shapes {shape_list} ({pos} expected)")
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities, and the hidden activations (MLP) for the backward pass."""
    if len(params) == 2:
        return _softmax(x @ params[0] + params[1]), None
    h = np.maximum(x @ params[0] + params[1], 0)
    return _softmax(h @ params[2] + params[3]), h


def loss_and_accuracy(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p, _ = forward(params, x)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
    return loss, float(np.mean(p.argmax(axis=1) == y))


def gradients(params: Params, x: np.ndarray, y: np.ndarray) -> Params:
    p, h = forward(params, x)
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    d /= len(y)
    if h is None:
        return [x.T @ d, d.sum(axis=0)]
    dh = (d @ params[2].T) * (h > 0)
    return [x.T @ dh, dh.sum(axis=0), h.T @ d, d.sum(axis=0)]


def sgd(params: Params, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float,
        rng: np.random.Generator, anchor: Params | None = None, mu: float = 0.0) -> Params:
    """Minibatch SGD from `params`; with `anchor` and mu > 0, FedProx's proximal term mu/2 |w - anchor|^2."""
    w = [p.copy() for p in params]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch_size):
            b = order[start:start + batch_size]
            g = gradients(w, x[b], y[b])
            for i in range(len(w)):
                step = g[i] + (mu * (w[i] - anchor[i]) if anchor is not None and mu > 0 else 0)
                w[i] -= lr * step
    return w
