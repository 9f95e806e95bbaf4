"""A checker for number answers: the arithmetic a reply writes out, evaluated safely.

Small models set a word problem's arithmetic up right more often than they carry it out right ("12 * 7 + 15"
becomes 97). So a reply may write its arithmetic as one line

    Calc: (45 - 5) / 2 * 3

and `calc(reply)` evaluates the last such line. Nothing is executed: the line is parsed with Python's `ast`
and only numbers, + - * / // % **, unary signs, parentheses and round/abs/min/max/int are computed; anything
else (names, attributes, other calls, huge powers or results) makes it None. What models write around the
expression is forgiven: a trailing "= 60" or "Answer: 60", "$", thousands commas, x or × for times, ÷, ^ for a power, and
"20%" for 20/100.

A reply may instead write its arithmetic as a short program (a coder model's habit, and the "program-aided"
way of answering word problems): a ```python block of assignments, `answer = ...` last.

    ```python
    apples = 5
    price = 0.5 * 3
    answer = apples * price
    ```

`program(reply)` evaluates it with the same rules: only assignments to names (`=`, `+=` ...), arithmetic over
numbers and the names assigned before, `print(...)`, and at most one function without parameters whose body
is such assignments and a `return`. Its value is `answer`'s; without one, what it printed last (models often
end with `print(total)`), else what the function returns, else the last name it assigned. No loop, no import,
no attribute: anything else makes it None.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

CALC_LINE = re.compile(r"^[\W_]*calc(?:ulation)?[ \t*]*[:=][ \t*]*(.+?)[ \t*.]*$", re.IGNORECASE | re.MULTILINE)
MAX_LENGTH = 300          # characters of an expression
MAX_VALUE = 1e15          # no intermediate value beyond this
MAX_EXPONENT = 64
PROGRAM = re.compile(r"```[ \t]*(?:python3?|py)?\s(.*?)```", re.IGNORECASE | re.DOTALL)
MAX_PROGRAM = 3000        # characters of a program
MAX_STATEMENTS = 60

BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
FUNCTIONS: dict[str, Callable[..., float]] = {"round": round, "abs": abs, "min": min, "max": max, "int": int}


@dataclass(frozen=True)
class Calc:
    expression: str     # as the reply wrote it
    value: float


def expression_part(line: str) -> str:
    """What a Calc line computes: "3 * 4 = 12" and "3 * 4 Answer: 12" (one line) give "3 * 4"."""
    return re.split(r"answer", line, flags=re.IGNORECASE)[0].split("=")[0].strip()


def clean(text: str) -> str:
    """The expression part of a Calc line, in Python's spelling."""
    text = expression_part(text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)              # 1,200 -> 1200
    text = text.replace("$", "").replace("×", "*").replace("·", "*").replace("÷", "/").replace("^", "**")
    text = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", "*", text)   # 3 x 4 -> 3*4
    return re.sub(r"(\d+(?:\.\d+)?)\s*%", r"(\1/100)", text)     # 20% -> (20/100)


def evaluate(expression: str) -> float | None:
    """The value of an arithmetic expression, or None when it is not one (or is too big to be an answer)."""
    text = clean(expression).strip()
    if not text or len(text) > MAX_LENGTH:
        return None
    try:
        value = _eval(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) and abs(value) <= MAX_VALUE else None


def run_program(source: str) -> float | None:
    """The value of a program of assignments (see the module's docstring), or None when it is not one."""
    if len(source) > MAX_PROGRAM:
        return None
    try:
        body = ast.parse(source, mode="exec").body
        names: dict[str, float] = {}
        printed: list[float] = []
        returned = _run(body, names, printed, top=True)
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError, KeyError):
        return None
    last = names[next(reversed(names))] if names else None   # _assign keeps the last assigned name last
    value = names.get("answer", printed[-1] if printed else returned if returned is not None else last)
    return value if value is not None and math.isfinite(value) and abs(value) <= MAX_VALUE else None


def _run(body: list[ast.stmt], names: dict[str, float], printed: list[float], *, top: bool) -> float | None:
    """Run statements over `names`, adding what `print` shows to `printed`; the value a `return` (or, at the top,
    the one function) gives."""
    if len(body) > MAX_STATEMENTS:
        raise ValueError("too long")
    returned: float | None = None
    functions = 0
    for stmt in body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            _assign(names, stmt.targets[0].id, _eval(stmt.value, names))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            _assign(names, stmt.target.id, _eval(stmt.value, names))
        elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name) and type(stmt.op) in BINARY:
            _assign(names, stmt.target.id, _eval(ast.BinOp(ast.Name(stmt.target.id, ast.Load()), stmt.op, stmt.value), names))
        elif isinstance(stmt, ast.Return) and not top and stmt.value is not None:
            return _eval(stmt.value, names)
        elif (isinstance(stmt, ast.FunctionDef) and top and not functions and not stmt.args.args
              and not stmt.args.vararg and not stmt.args.kwarg and not stmt.decorator_list):
            functions += 1
            returned = _run(stmt.body, dict(names), printed, top=False)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and _printed(stmt.value):
            printed.extend(_shown(stmt.value, names, returned))
        elif isinstance(stmt, ast.Expr) and (isinstance(stmt.value, ast.Constant) or _called(stmt.value)):
            continue   # a docstring, or solution() called for nothing
        elif isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call) and _called(stmt.value):
            continue   # result = solution(): the function's value stands for it
        else:
            raise ValueError(f"not an assignment: {type(stmt).__name__}")
    return returned


def _assign(names: dict[str, float], name: str, value: float) -> None:
    names.pop(name, None)
    names[name] = value


def _printed(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "print"


def _shown(call: ast.Call, names: dict[str, float], returned: float | None) -> list[float]:
    """The number a print shows: its one argument's value (`print(total)`, `print(solution())`), or none (a
    print of text, or of several things)."""
    if len(call.args) != 1 or call.keywords:
        return []
    arg = call.args[0]
    if _called(arg):
        return [] if returned is None else [returned]
    try:
        return [_eval(arg, names)]
    except (ValueError, TypeError, KeyError, ZeroDivisionError, OverflowError):
        return []


def _called(node: ast.expr) -> bool:
    """A call of a function without arguments (the program's own `solution()`)."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in FUNCTIONS
            and not node.args and not node.keywords)


def _eval(node: ast.AST, names: dict[str, float] | None = None) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _bounded(float(node.value) if isinstance(node.value, float) else node.value)
    if isinstance(node, ast.Name) and names is not None and isinstance(node.ctx, ast.Load):
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, names)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_VALUE ** 0.5):
            raise ValueError("power too big")
        return _bounded(BINARY[type(node.op)](left, right))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords and 1 <= len(node.args) <= 8):
        args = [_eval(a, names) for a in node.args]
        if node.func.id == "round" and len(args) == 2:
            return _bounded(round(args[0], int(args[1])))
        return _bounded(FUNCTIONS[node.func.id](*args))
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def _bounded(v: float) -> float:
    if isinstance(v, complex) or not math.isfinite(v) or abs(v) > MAX_VALUE:
        raise ValueError("out of range")
    return v


def calc(reply: str) -> Calc | None:
    """The reply's last Calc line that evaluates, else its last program that runs, with its value; None when
    it has neither."""
    for m in reversed(list(CALC_LINE.finditer(reply))):
        value = evaluate(m.group(1))
        if value is not None:
            return Calc(expression_part(m.group(1)), value)
    return program(reply)


def program(reply: str) -> Calc | None:
    """The reply's last ```python block that runs as a program of assignments, with its value."""
    for m in reversed(list(PROGRAM.finditer(reply))):
        value = run_program(m.group(1))
        if value is not None:
            return Calc(m.group(1).strip(), value)
    return None
