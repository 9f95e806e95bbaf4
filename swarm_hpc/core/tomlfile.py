"""Load a TOML file into a pydantic model, turning every problem into one `UserError` line.

This is the one config format of swarm-hpc: swarm specs and cluster files both go through `load_toml_model`.
Models declare `model_config = STRICT` (unknown fields are errors) and may give a field a fix hint with
`Field(..., json_schema_extra={"fix": "..."})`.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from swarm_hpc.errors import UserError, regular_file

STRICT = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a UserError naming the line."""
    if not Path(path).exists() and not Path(path).is_symlink():
        raise UserError(str(path), "file not found", "check the path")
    try:
        with open(regular_file(path, str(path), "the file"), "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(str(path), f"not valid TOML: {e}", "fix the TOML syntax there") from None
    except UnicodeDecodeError:
        raise UserError(str(path), "not a UTF-8 text file", "save it as UTF-8 TOML") from None


def load_toml_model(path: Path, model: type[M], extra: dict[str, Any] | None = None) -> M:
    """Read `path` and validate it as `model`; `extra` is merged in as context (e.g. the file's folder)."""
    data = read_toml(path)
    return validate_model(data, model, str(path), context=extra)


def validate_model(data: dict[str, Any], model: type[M], where: str, context: dict[str, Any] | None = None) -> M:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        raise pydantic_to_user_error(e, model, where) from None


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def pydantic_to_user_error(e: ValidationError, model: type[BaseModel], where: str) -> UserError:
    errors = e.errors(include_url=False)
    # an unknown field first: a misspelt required field then gets "did you mean" rather than "missing"
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    field = format_loc(loc)
    kind = err["type"]
    owner, info = _walk(model, loc)
    if kind == "extra_forbidden":
        known = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        fix = f"did you mean `{close[0]}`?" if close else "remove it"
        if known:
            fix += " Known fields here: " + ", ".join(known)
        return UserError(where, "unknown field", fix, field)
    if kind == "missing":
        return UserError(where, "required field is missing", f"add `{loc[-1]}`" + _hint(info), field)
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) and kind != "value_error" else ""
    fix = _hint(info).lstrip("; ") or "see the reference in README.md"
    return UserError(where, msg + shown, fix, field)


def _hint(info: Any) -> str:
    extra = getattr(info, "json_schema_extra", None) or {}
    fix = extra.get("fix") if isinstance(extra, dict) else None
    return f"; {fix}" if fix else ""


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any]:
    """Follow `loc` through nested models; return the model owning the last part and that field's info."""
    owner: Any = model
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(owner, type) and issubclass(owner, BaseModel)) or part not in owner.model_fields:
            return (owner if isinstance(owner, type) and issubclass(owner, BaseModel) else None), None
        info = owner.model_fields[part]
        nxt = _inner_model(info.annotation)
        if nxt is None:
            return owner, info
        owner = nxt
    return owner, info


def _inner_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = typing.get_origin(tp)
    if origin in (list, tuple, typing.Union, types.UnionType, dict):
        for arg in typing.get_args(tp):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None
