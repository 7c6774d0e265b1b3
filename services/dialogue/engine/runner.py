"""Runs flows: executes the innermost frame's instructions until it waits (for an answer
or a workflow), hands off, or every flow has ended."""

from __future__ import annotations

from services.botdef import Call, Collect, End, Handoff, RunWorkflow, Say, Search, SetSlots
from services.dialogue.engine.api import WorkflowRequest
from services.dialogue.engine.knowledge import run_search
from services.dialogue.engine.program import Goto, Instruction, JumpUnless, holds
from services.dialogue.engine.turn import Turn

MAX_STEPS = 1000
"""Instructions one call may execute (flows have no loops; this guards against bugs)."""


def run(turn: Turn) -> None:
    """Advance the flows as far as they go in this turn."""
    for _ in range(MAX_STEPS):
        if not turn.stack or turn.handed_off or turn.waiting is not None:
            return
        instruction = turn.current()
        if instruction is None:
            turn.pop()
            continue
        if not execute(turn, instruction):
            return
    turn.cancel_all("step_limit")
    turn.say("utter_default")


def execute(turn: Turn, instruction: Instruction) -> bool:
    """Execute one instruction of the innermost frame; False when the flow now waits."""
    if isinstance(instruction, Collect):
        return _collect(turn, instruction)
    if isinstance(instruction, RunWorkflow):
        start_workflow(turn, instruction)
        return False
    if isinstance(instruction, Handoff):
        turn.pop()  # the flow reached its handoff step: it did its job (completed, not cancelled)
        turn.handoff("flow", instruction.message)
        return False
    if isinstance(instruction, Search):
        run_search(turn, instruction)
        return True
    if isinstance(instruction, JumpUnless):
        if holds(instruction.condition, turn.value):
            turn.advance()
        else:
            turn.update_top(pc=instruction.target)
        return True
    if isinstance(instruction, Goto):
        turn.update_top(pc=instruction.target)
        return True
    _simple(turn, instruction)
    return True


def _simple(turn: Turn, instruction: Say | SetSlots | Call | End) -> None:
    if isinstance(instruction, End):
        turn.pop()
        return
    turn.advance()
    if isinstance(instruction, Say):
        turn.say(instruction.message)
    elif isinstance(instruction, SetSlots):
        for name, value in instruction.values:
            turn.set_slot(name, value)
    else:
        turn.push(instruction.flow, "call")


def _collect(turn: Turn, step: Collect) -> bool:
    if turn.value(step.slot) is not None:
        turn.advance()
        return True
    ask(turn, step)
    return False


def ask(turn: Turn, step: Collect) -> None:
    """Say the question of a collect step."""
    slot = turn.bot.slot(step.slot)
    turn.say(step.ask, slot=turn.slot_context(slot))


def start_workflow(turn: Turn, step: RunWorkflow) -> None:
    inputs = {i.name: turn.value(i.slot) if i.slot is not None else i.value for i in step.inputs}
    run_id = turn.run_id()
    turn.workflows.append(WorkflowRequest(run_id, step.name, inputs))
    turn.waiting = run_id
    frame = turn.stack[-1]
    turn.event("workflow_started", run_id=run_id, workflow=step.name, inputs=inputs,
               flow=frame.flow)
    if step.started is not None:
        turn.say(step.started, workflow={"name": step.name, "status": "running"})
