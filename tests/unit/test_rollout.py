"""Safe rollout without servers: canary choice, rollout records, the guard's decisions, the
registry's candidate slot and the shadow runner (docs/rollout.md)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from services.common.modelstore import Rollout, RolloutInvalid
from services.common.pb.botfactory.v1 import nlu_pb2
from services.dialogue.nlu_client import to_result
from services.dialogue.rollout_guard import RolloutWindow, VariantStats, decide
from services.dialogue.worker import nlu_json
from services.gateway.http.model_versions import rollout_of
from services.gateway.http.problems import RequestInvalid
from services.nlu.engine import Prediction
from services.nlu.metrics import NluMetrics
from services.nlu.registry import ACTIVE, CANARY, BatchSettings, ModelRegistry
from services.nlu.rollout import Plan, Rollouts, ShadowItem, ShadowRunner, canary_point

# --- canary choice ------------------------------------------------------------------------------


def test_canary_point_is_stable_across_processes_and_rollouts() -> None:
    # pinned: a process-salted hash (Python's hash()) would differ between replicas
    assert canary_point("banking", "v2", "conv-1") == pytest.approx(0.8629742274201019)
    assert canary_point("banking", "v3", "conv-1") == pytest.approx(0.9702413217820439)


def test_canary_share_is_respected_sticky_and_monotonic() -> None:
    conversations = [f"c{i}" for i in range(20_000)]
    ten = Plan("v2", "canary", 0.1)
    twenty = Plan("v2", "canary", 0.2)
    at_ten = {c for c in conversations if ten.variant("bot", c) == CANARY}
    at_twenty = {c for c in conversations if twenty.variant("bot", c) == CANARY}
    assert abs(len(at_ten) / len(conversations) - 0.1) < 0.01
    assert abs(len(at_twenty) / len(conversations) - 0.2) < 0.01
    assert at_ten <= at_twenty  # raising the share keeps conversations on the canary
    assert all(ten.variant("bot", c) == CANARY for c in list(at_ten)[:100])  # sticky


def test_no_conversation_id_and_shadow_mode_use_the_active_model() -> None:
    assert Plan("v2", "canary", 1.0).variant("bot", "") == ACTIVE
    assert Plan("v2", "canary", 1.0).variant("bot", "c1") == CANARY
    assert Plan("v2", "shadow", 0.0).variant("bot", "c1") == ACTIVE
    rollouts = Rollouts(NluMetrics.create().rollout)
    assert rollouts.variant_for("bot", "c1") == ACTIVE
    rollouts.set("bot", Plan("v2", "canary", 1.0))
    assert rollouts.variant_for("bot", "c1") == CANARY and not rollouts.shadowing("bot")
    rollouts.set("bot", Plan("v2", "shadow", 0.0))
    assert rollouts.variant_for("bot", "c1") == ACTIVE and rollouts.shadowing("bot")
    rollouts.clear("bot")
    assert rollouts.get("bot") is None


# --- rollout records ----------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"mode": "blue"}, "mode must be one of shadow, canary"),
    ({"share": 1.5}, "share must be a number in 0..1"),
    ({"share": 0.0}, "above 0 for a canary"),
    ({"share": math.nan}, "share must be"),
    ({"share": True}, "share must be"),
    ({"candidate": "../x"}, "is not a version id"),
    ({"max_fallback_increase": -0.1}, "max_fallback_increase must be"),
    ({"max_negative_feedback_increase": 2}, "max_negative_feedback_increase must be"),
    ({"min_samples": 0}, "min_samples must be an integer >= 1"),
    ({"min_samples": 2.5}, "min_samples must be"),
])
def test_rollout_record_validation(changes: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"candidate": "v2", "mode": "canary", "share": 0.1, **changes}
    with pytest.raises(RolloutInvalid, match=message):
        Rollout(**fields).validate()


def test_rollout_record_round_trip_and_unreadable_record() -> None:
    record = Rollout(candidate="v2", mode="canary", share=0.25, baseline="v1",
                     started_at_unix_ms=5, actor="k1", min_samples=10).validate()
    assert Rollout.from_bytes(record.to_bytes()) == record
    assert Rollout(candidate="v2", mode="shadow").validate().share == 0.0
    for raw in (b"{", b"[]", json.dumps({"candidate": "v2"}).encode(),
                json.dumps({"candidate": "v2", "mode": "canary", "share": 0.1,
                            "surprise": 1}).encode()):
        with pytest.raises(RolloutInvalid):
            Rollout.from_bytes(raw)


def test_admin_api_rollout_body_reports_every_bad_field() -> None:
    with pytest.raises(RequestInvalid) as caught:
        rollout_of({"candidate": "v 2", "mode": "canary", "share": 3, "min_samples": 0.5,
                    "extra": 1}, "k1")
    fields = {e.field for e in caught.value.errors}
    assert fields == {"candidate", "share", "min_samples", "extra"}
    with pytest.raises(RequestInvalid) as caught:
        rollout_of({"candidate": "v2", "mode": "canary"}, "k1")
    assert [e.field for e in caught.value.errors] == ["share"]
    record = rollout_of({"candidate": "v2", "mode": "canary", "share": 0.2,
                         "max_fallback_increase": 0.1, "min_samples": 20}, "k1")
    assert (record.share, record.max_fallback_increase, record.min_samples, record.actor) == (
        0.2, 0.1, 20, "k1")
    assert record.max_negative_feedback_increase == 0.05


# --- the guard's decisions ----------------------------------------------------------------------

CANARY_ROLLOUT = Rollout(candidate="v2", mode="canary", share=0.5, baseline="v1",
                         started_at_unix_ms=1_000_000, max_fallback_increase=0.1,
                         max_negative_feedback_increase=0.1, min_samples=20)
T0 = 1_000.0  # seconds: the rollout's start


def _turn(window: RolloutWindow, conversation: str, variant: str, at: float, *,
          fallback: bool = False, version: str | None = None) -> None:
    version = version or ("v2" if variant == "canary" else "v1")
    window.observe("user_message", conversation, {"nlu": {
        "intent": "greet", "variant": variant, "model_version": version}}, at)
    if fallback:
        window.observe("fallback", conversation, {"reason": "low_confidence"}, at)


def _traffic(window: RolloutWindow, *, turns: int, active_fallbacks: int,
             canary_fallbacks: int, at: float = T0 + 1) -> None:
    for i in range(turns):
        _turn(window, f"a{i}", "active", at, fallback=i < active_fallbacks)
        _turn(window, f"c{i}", "canary", at, fallback=i < canary_fallbacks)


def test_guard_aborts_when_canary_falls_back_more_than_the_threshold() -> None:
    window = RolloutWindow(CANARY_ROLLOUT, window_s=600)
    _traffic(window, turns=40, active_fallbacks=4, canary_fallbacks=12)  # 0.10 vs 0.30
    reason = window.verdict(T0 + 2)
    assert reason is not None and "fallback rate 0.300 exceeds active 0.100" in reason


def test_guard_keeps_a_canary_within_the_threshold() -> None:
    window = RolloutWindow(CANARY_ROLLOUT, window_s=600)
    _traffic(window, turns=40, active_fallbacks=4, canary_fallbacks=7)  # +0.075 <= 0.1
    assert window.verdict(T0 + 2) is None


def test_guard_waits_for_min_samples_of_both_variants() -> None:
    window = RolloutWindow(CANARY_ROLLOUT, window_s=600)
    _traffic(window, turns=19, active_fallbacks=0, canary_fallbacks=19)
    assert window.verdict(T0 + 2) is None
    for i in range(5):
        _turn(window, f"c-more{i}", "canary", T0 + 1, fallback=True)
    assert window.verdict(T0 + 2) is None  # the active variant still has 19
    _turn(window, "a-more", "active", T0 + 1)
    assert window.verdict(T0 + 2) is not None


def test_guard_counts_negative_feedback_to_the_conversations_variant() -> None:
    window = RolloutWindow(CANARY_ROLLOUT, window_s=600)
    _traffic(window, turns=20, active_fallbacks=0, canary_fallbacks=0)
    for i in range(5):  # thumbs down on canary conversations only; thumbs up does not count
        window.observe("feedback", f"c{i}", {"rating": -1, "message_id": f"m{i}:0"}, T0 + 2)
        window.observe("feedback", f"a{i}", {"rating": 1, "message_id": f"n{i}:0"}, T0 + 2)
    window.observe("feedback", "unknown-conversation", {"rating": -1}, T0 + 2)
    assert len(window.stats["canary"].negative) == 5
    assert len(window.stats["active"].negative) == 0
    reason = window.verdict(T0 + 3)
    assert reason is not None and "negative-feedback rate 0.250" in reason


def test_guard_ignores_events_before_the_rollout_and_other_candidates() -> None:
    window = RolloutWindow(CANARY_ROLLOUT, window_s=600)
    _traffic(window, turns=30, active_fallbacks=0, canary_fallbacks=30, at=T0 - 5)
    for i in range(30):
        _turn(window, f"old{i}", "canary", T0 + 1, fallback=True, version="v9")
    assert len(window.stats["canary"].turns) == 0
    assert len(window.stats["canary"].fallbacks) == 0
    window.observe("user_message", "x", {"nlu": None}, T0 + 1)  # a button payload
    window.observe("fallback", "x", {}, T0 + 1)
    assert all(len(s.fallbacks) == 0 for s in window.stats.values())


def test_guard_window_slides() -> None:
    window = RolloutWindow(CANARY_ROLLOUT, window_s=60)
    _traffic(window, turns=40, active_fallbacks=0, canary_fallbacks=40, at=T0 + 1)
    assert window.verdict(T0 + 2) is not None
    assert window.verdict(T0 + 100) is None  # all of it is older than the window now
    assert len(window.stats["canary"].turns) == 0


def test_decide_ignores_shadow_rollouts() -> None:
    bad, good = VariantStats(), VariantStats()
    for t in range(100):
        bad.turns.append(t)
        bad.fallbacks.append(t)
        good.turns.append(t)
    shadow = Rollout(candidate="v2", mode="shadow", min_samples=1)
    assert decide(shadow, good, bad) is None
    assert decide(Rollout(candidate="v2", mode="canary", share=0.1, min_samples=1),
                  good, bad) is not None


# --- dialogue: the variant reaches the user_message event ---------------------------------------


def test_nlu_variant_and_version_are_recorded_on_the_user_message() -> None:
    reply = nlu_pb2.ParseResponse(intent=nlu_pb2.IntentScore(name="greet", confidence=0.9),
                                  model_version="v2", variant="canary")
    data = nlu_json(to_result(reply))
    assert data is not None
    assert (data["model_version"], data["variant"]) == ("v2", "canary")


# --- NLU registry: the candidate slot -----------------------------------------------------------


class FakeModel:
    kind = "nlu"
    bot = "tiny"

    def __init__(self, version: str, intent: str, delay: float = 0.0) -> None:
        self.version = version
        self.intent = intent
        self.delay = delay

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if self.delay:
            import time
            time.sleep(self.delay)
        return [Prediction(self.intent, 0.9 if self.intent == "greet" else 0.4,
                           [(self.intent, 0.9)], [], False) for _ in texts]


def _registry(models: dict[str, FakeModel]) -> ModelRegistry:
    loader: Any = lambda directory: models[Path(directory).name]  # noqa: E731
    return ModelRegistry(ThreadPoolExecutor(2), BatchSettings(8, 0.0, 2), NluMetrics.create(),
                         loader=loader)


async def test_registry_candidate_is_promoted_in_place_and_dropped() -> None:
    models = {"v1": FakeModel("v1", "greet"), "v2": FakeModel("v2", "bye")}
    registry = _registry(models)
    await registry.load(Path("v1"), "t")
    assert (await registry.predict_variant("tiny", ["hi"], CANARY))[2] == ACTIVE  # none yet
    candidate = await registry.load(Path("v2"), "t", candidate=True)
    entry, predictions, used = await registry.predict_variant("tiny", ["hi"], CANARY)
    assert (entry.model.version, predictions[0].intent, used) == ("v2", "bye", CANARY)
    assert (await registry.predict_variant("tiny", ["hi"], ACTIVE))[0].model.version == "v1"
    assert sorted(e.model.version for e in registry.loaded()) == ["v1", "v2"]
    assert not await registry.promote_candidate("tiny", "v9")
    assert await registry.promote_candidate("tiny", "v2")
    assert registry.get("tiny") is candidate and registry.candidate("tiny") is None
    await registry.load(Path("v1"), "t", candidate=True)
    await registry.drop_candidate("tiny")
    assert [e.model.version for e in registry.loaded()] == ["v2"]
    await registry.close()


async def test_canary_requests_fall_back_to_active_while_the_candidate_closes() -> None:
    models = {"v1": FakeModel("v1", "greet"), "v2": FakeModel("v2", "bye", delay=0.01)}
    registry = _registry(models)
    await registry.load(Path("v1"), "t")
    await registry.load(Path("v2"), "t", candidate=True)
    requests = [asyncio.create_task(registry.predict_variant("tiny", ["hi"], CANARY))
                for _ in range(50)]
    await asyncio.sleep(0)
    await registry.drop_candidate("tiny")
    later = await registry.predict_variant("tiny", ["hi"], CANARY)
    results = await asyncio.gather(*requests)  # none failed
    assert later[2] == ACTIVE
    assert {r[2] for r in results} <= {ACTIVE, CANARY}
    await registry.close()


# --- shadow runner ------------------------------------------------------------------------------


async def test_shadow_runner_compares_publishes_disagreements_and_drops_when_full() -> None:
    models = {"v1": FakeModel("v1", "greet"), "v2": FakeModel("v2", "bye")}
    registry = _registry(models)
    await registry.load(Path("v1"), "t")
    await registry.load(Path("v2"), "t", candidate=True)
    metrics = NluMetrics.create().rollout
    published: list[tuple[str, dict[str, Any]]] = []

    async def publish(subject: str, body: bytes) -> None:
        published.append((subject, json.loads(body)))

    runner = ShadowRunner(registry, metrics, publish, queue_size=2, batch_size=8)
    active = Prediction("greet", 0.9, [("greet", 0.9)], [], False)
    item = ShadowItem("tiny", "call me at +44 20 7946 0958", "conv-7", "v1", active)
    for _ in range(3):  # the third does not fit: dropped, never waited for
        runner.offer(item)
    assert metrics.shadow_dropped.labels(bot="tiny")._value.get() == 1
    runner.start()
    for _ in range(100):
        if len(published) == 2:
            break
        await asyncio.sleep(0.02)
    await runner.stop()
    assert metrics.shadow_comparisons.labels(bot="tiny", agree="false")._value.get() == 2
    subject, body = published[0]
    assert subject == "events.nlu.shadow.tiny"
    assert body["conversation_id"] == "conv-7" and "7946" not in body["text"]
    assert body["active"] == {"version": "v1", "intent": "greet", "confidence": 0.9,
                              "out_of_scope": False}
    assert body["candidate"]["version"] == "v2" and body["candidate"]["intent"] == "bye"
    delta = metrics.shadow_confidence_delta.labels(bot="tiny")
    assert delta._sum.get() == pytest.approx(2 * (0.4 - 0.9))
    await registry.close()

