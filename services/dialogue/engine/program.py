"""Flows compiled to flat programs: a frame's `pc` indexes one; `branch` becomes jumps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from services.botdef import (
    Branch,
    Call,
    Collect,
    Condition,
    End,
    FlowDef,
    Handoff,
    RunWorkflow,
    Say,
    Search,
    SetSlots,
    Step,
)
from services.botdef.expressions import ExpressionError, evaluate, truthy


@dataclass(frozen=True)
class JumpUnless:
    """Go to `target` unless `condition` holds (then go on with the next instruction)."""

    condition: Condition
    target: int


@dataclass(frozen=True)
class Goto:
    target: int


Instruction = (Say | Collect | SetSlots | Call | RunWorkflow | Search | Handoff | End | JumpUnless
               | Goto)


def compile_flow(flow: FlowDef) -> tuple[Instruction, ...]:
    out: list[Any] = []
    _emit(flow.steps, out)
    return tuple(out)


def _emit(steps: tuple[Step, ...], out: list[Any]) -> None:
    for step in steps:
        if isinstance(step, Branch):
            _emit_branch(step, out)
        else:
            out.append(step)


def _emit_branch(branch: Branch, out: list[Any]) -> None:
    exits: list[int] = []
    for condition, steps in branch.cases:
        test = len(out)
        out.append(None)
        _emit(steps, out)
        exits.append(len(out))
        out.append(None)
        out[test] = JumpUnless(condition, len(out))
    _emit(branch.otherwise, out)
    for index in exits:
        out[index] = Goto(len(out))


def collected_slots(program: tuple[Instruction, ...]) -> frozenset[str]:
    """The slots the program's own collect steps ask for."""
    return frozenset(i.slot for i in program if isinstance(i, Collect))


def referenced_slots(program: tuple[Instruction, ...]) -> frozenset[str]:
    """Every slot the program collects, sets, tests, passes to or saves from a workflow."""
    found: set[str] = set()
    for instruction in program:
        if isinstance(instruction, Collect):
            found.add(instruction.slot)
        elif isinstance(instruction, SetSlots):
            found.update(name for name, _ in instruction.values)
        elif isinstance(instruction, JumpUnless):
            found.update(_condition_slots(instruction.condition))
        elif isinstance(instruction, RunWorkflow):
            found.update(i.slot for i in instruction.inputs if i.slot is not None)
            found.update(slot for _, slot in instruction.save)
        elif isinstance(instruction, Search) and instruction.save is not None:
            found.add(instruction.save)
    return frozenset(found)


def entity_filled_slots(program: tuple[Instruction, ...]) -> frozenset[str]:
    """The slots a message's entities may fill while the program runs: those it references,
    except the ones only a workflow or a search fills (`save:` targets it does not collect);
    those come from the system, never from what the user wrote."""
    saved: set[str] = set()
    for instruction in program:
        if isinstance(instruction, RunWorkflow):
            saved.update(slot for _, slot in instruction.save)
        elif isinstance(instruction, Search) and instruction.save is not None:
            saved.add(instruction.save)
    return referenced_slots(program) - (saved - collected_slots(program))


def _condition_slots(condition: Condition) -> Iterator[str]:
    if condition.slot:
        yield condition.slot
    yield from condition.reads
    for child in condition.children:
        yield from _condition_slots(child)


def holds(condition: Condition, value_of: Callable[[str], Any]) -> bool:
    """Whether `condition` is true of the slot values given by `value_of`."""
    if condition.op == "all":
        return all(holds(child, value_of) for child in condition.children)
    if condition.op == "any":
        return any(holds(child, value_of) for child in condition.children)
    if condition.op == "not":
        return not holds(condition.children[0], value_of)
    if condition.op == "expression":
        return _expression_holds(condition, value_of)
    value = value_of(condition.slot)
    if condition.op == "present":
        return (value is not None) == bool(condition.value)
    if condition.op == "equals":
        return same(value, condition.value)
    if condition.op == "not_equals":
        return not same(value, condition.value)
    if condition.op == "in":
        return any(same(value, item) for item in condition.value)
    return _compare(condition.op, value, condition.value)


def _expression_holds(condition: Condition, value_of: Callable[[str], Any]) -> bool:
    """An `if:` expression over the slots; one that cannot be evaluated (`slots.amount > 100`
    while the amount is unset) is false, as `gt` of an unset slot is."""
    slots = {name: value_of(name) for name in condition.reads}
    try:
        return truthy(evaluate(condition.value, {"slots": slots}))
    except ExpressionError:
        return False


def _compare(op: str, value: Any, limit: Any) -> bool:
    if not _is_number(value) or not _is_number(limit):
        return False
    number, bound = float(value), float(limit)
    if op == "gt":
        return number > bound
    if op == "lt":
        return number < bound
    if op == "gte":
        return number >= bound
    return number <= bound


def same(left: Any, right: Any) -> bool:
    """Slot value equality: text case-insensitively, numbers by value, else exactly."""
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold() == right.casefold()
    if _is_number(left) and _is_number(right):
        return float(left) == float(right)
    return type(left) is type(right) and bool(left == right)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
