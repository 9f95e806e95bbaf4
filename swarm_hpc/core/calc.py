"""A checker for number answers: the arithmetic a reply writes out, evaluated safely.

Small models set a word problem's arithmetic up right more often than they carry it out right ("12 * 7 + 15"
becomes 97). So a reply may write its arithmetic as one line

    Calc: (45 - 5) / 2 * 3

and `calc(reply)` evaluates the last such line. Nothing is executed: the line is parsed with Python's `ast`
and only numbers, + - * / // % **, unary signs, parentheses and round/abs/min/max/int are computed; anything
else (names, attributes, other calls, huge powers or results) makes it None. What models write around the
expression is forgiven: a trailing "= 60" or "Answer: 60", "$", thousands commas, x or × for times, ÷, ^ for a power, and
"20%" for 20/100.
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


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _bounded(float(node.value) if isinstance(node.value, float) else node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_VALUE ** 0.5):
            raise ValueError("power too big")
        return _bounded(BINARY[type(node.op)](left, right))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords and 1 <= len(node.args) <= 8):
        args = [_eval(a) for a in node.args]
        if node.func.id == "round" and len(args) == 2:
            return _bounded(round(args[0], int(args[1])))
        return _bounded(FUNCTIONS[node.func.id](*args))
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def _bounded(v: float) -> float:
    if isinstance(v, complex) or not math.isfinite(v) or abs(v) > MAX_VALUE:
        raise ValueError("out of range")
    return v


def calc(reply: str) -> Calc | None:
    """The reply's last Calc line that evaluates, with its value; None when it has none."""
    for m in reversed(list(CALC_LINE.finditer(reply))):
        value = evaluate(m.group(1))
        if value is not None:
            return Calc(expression_part(m.group(1)), value)
    return None
