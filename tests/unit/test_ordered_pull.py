"""OrderedPull's per-conversation order: a message waits for its turn, which the one before
gives either when settled or, earlier, when its handler releases it (sent, ack to come)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.ordered_pull import OrderedPull, Turn


@dataclass
class FakeMsg:
    data: bytes
    subject: str = "conv.out.b.c"
    acked: int = 0

    async def ack(self) -> None:
        self.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        raise AssertionError("not expected")


@dataclass
class Recorder(OrderedPull):
    log: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    release_early: bool = True

    def __post_init__(self) -> None:
        super().__init__("test", max_ack_pending=8, ack_wait_s=30.0, fetch_timeout_s=0.0)

    async def deliver(self, msg: Msg, message: conversation_pb2.BotMessage,
                      turn: Turn) -> None:
        ident = message.message_id
        self.log.append(f"read {ident}")
        await turn.wait()
        self.log.append(f"send {ident}")
        await self.gates[f"sent {ident}"].wait()
        if self.release_early:
            turn.release()
        await self.gates[f"acked {ident}"].wait()
        self.log.append(f"acked {ident}")
        await msg.ack()


def bot_message(conversation: str, ident: str) -> FakeMsg:
    return FakeMsg(conversation_pb2.BotMessage(bot_id="b", conversation_id=conversation,
                                               message_id=ident).SerializeToString())


async def settle_down() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def run(pull: Recorder, messages: list[FakeMsg]) -> list[asyncio.Task[None]]:
    for msg in messages:
        pull.gates[f"sent {bot_message_id(msg)}"] = asyncio.Event()
        pull.gates[f"acked {bot_message_id(msg)}"] = asyncio.Event()
    tasks = []
    for msg in messages:
        await pull._slots.acquire()
        tasks.append(pull.take(msg))  # type: ignore[arg-type]
    await settle_down()
    return tasks


def bot_message_id(msg: FakeMsg) -> str:
    return conversation_pb2.BotMessage.FromString(msg.data).message_id


async def test_the_next_message_is_read_at_once_and_sent_once_the_one_before_is_released(
        ) -> None:
    pull = Recorder()
    messages = [bot_message("c", "1"), bot_message("c", "2")]
    tasks = await run(pull, messages)
    assert pull.log == ["read 1", "send 1", "read 2"]  # 2 prepared while 1 is being sent
    pull.gates["sent 1"].set()
    await settle_down()
    assert pull.log == ["read 1", "send 1", "read 2", "send 2"]  # before 1's ack
    for gate in pull.gates.values():
        gate.set()
    await asyncio.gather(*tasks)
    assert [msg.acked for msg in messages] == [1, 1]
    assert pull.in_flight == 0 and not pull._tails


async def test_without_a_release_the_next_waits_until_the_one_before_is_settled() -> None:
    pull = Recorder(release_early=False)
    tasks = await run(pull, [bot_message("c", "1"), bot_message("c", "2")])
    pull.gates["sent 1"].set()
    await settle_down()
    assert "send 2" not in pull.log
    pull.gates["acked 1"].set()
    await settle_down()
    assert pull.log[-2:] == ["acked 1", "send 2"]
    for gate in pull.gates.values():
        gate.set()
    await asyncio.gather(*tasks)


async def test_other_conversations_do_not_wait() -> None:
    pull = Recorder()
    tasks = await run(pull, [bot_message("c", "1"), bot_message("d", "2")])
    assert pull.log == ["read 1", "send 1", "read 2", "send 2"]
    for gate in pull.gates.values():
        gate.set()
    await asyncio.gather(*tasks)
