"""The message path's pieces without servers (issue 17 items 1, 3, 7, 13): scoped ids, the
dialogue's record of workflow origins, the gateway's waiter and the webhook payload of a user
message relayed during a handoff."""

from __future__ import annotations

import asyncio

from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.subjects import scoped_id, unscoped_id
from services.dialogue.engine import Tracker
from services.dialogue.store import Origin, Record
from services.gateway.hub import _complete, _Waiter
from services.gateway.webhooks import message_payload


def test_scoped_ids_differ_by_bot_and_conversation_and_read_back() -> None:
    ids = {scoped_id(bot, conv, "m-1") for bot in ("banking", "otherbot")
           for conv in ("chatA", "victim")}
    assert len(ids) == 4
    assert scoped_id("banking", "c1", "m-1:e") == "banking.c1.m-1:e"
    assert unscoped_id("banking.c1.m-1:e") == "m-1:e"
    assert unscoped_id("m-1:e") == "m-1:e"  # stored before ids were scoped


def test_record_keeps_workflow_origins_and_reads_old_records() -> None:
    tracker = Tracker.new("banking", "c1", 0.0)
    record = Record(tracker, 3).after_turn(tracker, "m-1", (),
                                           {"run-1": Origin("m-1", "_INBOX.x.gw.r.banking.c1.m-1")})
    again = Record.decode(record.encode(), 4)
    assert again.origin("run-1") == Origin("m-1", "_INBOX.x.gw.r.banking.c1.m-1")
    assert again.origin("run-2") is None
    later = again.after_turn(tracker, "wf-run-1", ())
    assert later.origin("run-1") == Origin("m-1", "_INBOX.x.gw.r.banking.c1.m-1")
    old = Record.decode(b'{"format":1,"tracker":' + tracker.to_json() + b',"applied":["m-0"]}',
                        1)
    assert old.origins == {} and old.seen("m-0")


def _reply(message_id: str, in_reply_to: str, index: int, last: bool,
           ) -> conversation_pb2.BotMessage:
    return conversation_pb2.BotMessage(message_id=message_id, in_reply_to=in_reply_to,
                                       index=index, last=last, text=message_id)


def test_waiter_ends_the_turn_on_its_summary_and_waits_for_the_workflows() -> None:
    waiter = _Waiter()
    waiter.add(_reply("m-1:0", "m-1", 0, True))
    assert not waiter.turn_done()  # the summary ends a turn, not the last reply
    waiter.summarize(conversation_pb2.TurnSummary(in_reply_to="m-1", replies=1,
                                                  awaiting_runs=["r1"]))
    assert waiter.turn_done() and waiter.outstanding() == {"r1"} and not waiter.all_done()
    notice = conversation_pb2.TurnSummary(in_reply_to="m-1", replies=1, run_id="r1",
                                          awaiting_runs=["r1"])
    waiter.add(_reply("progress-r1:0", "m-1", 0, True))
    waiter.summarize(notice)
    waiter.summarize(notice)  # redelivered: counted once
    assert waiter.outstanding() == {"r1"}
    waiter.summarize(conversation_pb2.TurnSummary(in_reply_to="m-1", replies=1, run_id="r1"))
    assert not waiter.all_done()  # the result's reply is not here yet
    waiter.add(_reply("wf-r1:0", "m-1", 0, True))
    assert waiter.all_done()
    result = waiter.result()
    assert result.complete and [r.message_id for r in result.replies] == [
        "m-1:0", "progress-r1:0", "wf-r1:0"]


def test_waiter_of_a_handed_off_conversation_is_done_without_replies() -> None:
    waiter = _Waiter()
    nlu = conversation_pb2.TurnNlu(intent="block_card", confidence=0.9)
    waiter.summarize(conversation_pb2.TurnSummary(in_reply_to="m-2", handoff=True, nlu=nlu))
    done = asyncio.run(waiter.until(waiter.all_done, 0.0))
    result = waiter.result()
    assert done and result.complete and result.handoff and result.replies == []
    assert result.nlu is not None and result.nlu.intent == "block_card"


def test_stored_replies_are_complete_per_turn() -> None:
    turn = [_reply("m-1:0", "m-1", 0, False), _reply("m-1:1", "m-1", 1, True)]
    result = [_reply("wf-r1:0", "m-1", 0, True)]
    assert _complete(turn) and _complete(turn + result)
    assert not _complete(turn[1:]) and not _complete([])
    assert not _complete([*turn, _reply("wf-r1:1", "m-1", 1, True)])


def test_webhook_payload_marks_a_relayed_user_message() -> None:
    relayed = conversation_pb2.BotMessage(bot_id="banking", conversation_id="c1",
                                          message_id="u-1", text="hello?", role="user")
    assert message_payload(relayed)["type"] == "user_message"
    assert message_payload(conversation_pb2.BotMessage(role="bot"))["type"] == "message"


def test_chaos_check_tells_conversations_apart_when_their_ids_collide() -> None:
    from benchmarks.chaos import Tally, check_replies

    tally = Tally()
    for conversation in ("chaos-a", "chaos-b"):
        tally.accepted[(conversation, "m0-0")] = conversation
        tally.order[conversation] = ["m0-0"]
    answered = [conversation_pb2.BotMessage(conversation_id="chaos-a", message_id="m0-0:0",
                                            in_reply_to="m0-0", index=0, last=True)]
    assert check_replies(tally, answered)["lost"] == 1  # chaos-b's m0-0 is not chaos-a's
    answered.append(conversation_pb2.BotMessage(conversation_id="chaos-b",
                                                message_id="m0-0:0", in_reply_to="m0-0",
                                                index=0, last=True))
    assert check_replies(tally, answered) == {"lost": 0, "duplicated": 0, "out_of_order": 0}


def test_chaos_telegram_check_compares_the_stream_with_what_the_platform_took() -> None:
    from benchmarks.chaos import Inbox, check_delivery
    from services.gateway.channels.base import split_text

    def bot(conversation: str, text: str, role: str = "bot") -> conversation_pb2.BotMessage:
        return conversation_pb2.BotMessage(conversation_id=conversation, text=text, role=role)

    long_text = "word " * 1000  # over Telegram's 4096 characters: two pieces at the platform
    stream = [bot("telegram-1", "How much?"), bot("telegram-1", "Who?", role="agent"),
              bot("telegram-1", "hi", role="user"),  # a relayed user message: not sent
              bot("telegram-2", long_text), bot("telegram-3", "a"), bot("telegram-3", "b")]
    inbox = Inbox()
    first, second = split_text(long_text, 4096)
    for chat, text in [("1", "How much?"), ("1", "Who?"), ("2", first), ("2", second),
                       ("3", "a"), ("3", "b")]:
        inbox(chat, text, 1.0)
    conversations = ["telegram-1", "telegram-2", "telegram-3"]
    figures = check_delivery(conversations, stream, inbox)
    assert (figures["lost"], figures["duplicated"], figures["out_of_order"]) == (0, 0, 0)
    assert figures["replies"] == figures["delivered"] == 6

    inbox("1", "Who?", 2.0)  # taken twice
    inbox.texts["3"].reverse()  # b before a
    stream.append(bot("telegram-3", "c"))  # never taken
    figures = check_delivery(conversations, stream, inbox)
    assert (figures["lost"], figures["duplicated"], figures["out_of_order"]) == (1, 1, 1)
    assert figures["duplicate_examples"] == [
        {"conversation": "telegram-1", "text": "Who?", "arrived_at": [1.0, 2.0]}]
