"""A learned router: the classifier a federated `router` run trained (its model.npz), on the frozen embedding
model it was trained with. `LearnedRouter(path)(request)` gives (skill, probability); a swarm spec's
`[router]` table uses it in place of, or before, its keyword rules (swarm_hpc/core/routing.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from swarm_hpc.core.routing import router_file
from swarm_hpc.errors import UserError
from swarm_hpc.fed import model


class LearnedRouter:
    def __init__(self, ref: str, base_dir: Path = Path("."), where: str = "[router]"):
        from swarm_hpc.knowledge.embed import Embedder

        path = router_file(ref, base_dir)
        fix = "give the model.npz of a finished `swarm-hpc fed run` with dataset = \"router\" (or its run directory)"
        try:
            with np.load(path) as z:
                n = len([k for k in z.files if k.startswith("p") and k[1:].isdigit()])
                self.params = [np.asarray(z[f"p{i}"], np.float64) for i in range(n)]
                self.skills = [str(c) for c in z["classes"]]
                embedding = str(z["embedding_model"])
        except FileNotFoundError:
            raise UserError(where, f"router model {str(path)!r} not found", fix, "model") from None
        except (OSError, ValueError, KeyError) as e:
            raise UserError(where, f"router model {str(path)!r} cannot be read ({e})", fix, "model") from None
        if not embedding or n not in (2, 4):
            raise UserError(where, f"{str(path)!r} is not a router (trained on dataset {'router' if embedding else 'digits'})",
                            fix, "model")
        self.path = path
        self.embedder = Embedder(embedding, base_dir, where=where, field="model")
        if self.embedder.dim != self.params[0].shape[0]:
            raise UserError(where, f"router {str(path)!r} expects {self.params[0].shape[0]}-number embeddings, "
                            f"{embedding!r} gives {self.embedder.dim}", "train the router again", "model")

    def __call__(self, request: str) -> tuple[str, float]:
        """The skill the router gives `request`, and its probability."""
        probs, _ = model.forward(self.params, self.embedder.embed([request]).astype(np.float64))
        best = int(np.argmax(probs[0]))
        return self.skills[best], float(probs[0, best])

    def close(self) -> None:
        self.embedder.close()
