"""program: verify-and-select where each expert answers with a short program of assignments (`answer = ...`), which
the checker (swarm_hpc/core/calc.py, no code is executed) runs; the vote is over what the programs compute.

"Program-aided" answering is the natural form for a coder model: its reasoning is the program, and the checker
carries the arithmetic out. A reply whose program does not run (a loop, a call) votes with its last number.
"""

from __future__ import annotations

from swarm_hpc.core.strategies.verify import Verify

PROGRAM_INSTRUCTION = ("Write a short Python program that computes the answer: one variable for each quantity in "
                       "the task, then the steps, then `answer = ...` with the final result. Only arithmetic: no "
                       "input, no loops, no imports. Reply with the program in one ```python block and nothing else.")


class Program(Verify):
    """The program is the answer's form, so it replaces the spec's `instruction` (which says how to write a text
    answer)."""

    name = "program"
    own_instruction = PROGRAM_INSTRUCTION

    @property
    def instruction(self) -> str:
        return PROGRAM_INSTRUCTION
