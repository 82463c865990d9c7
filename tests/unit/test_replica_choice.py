"""Replica choice (serving/router/replica_choice.py, EndpointTable.pick): prefix affinity,
least loaded, round robin."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from serving.config import RouterSettings
from serving.router.endpoints import EndpointTable
from serving.router.replica_choice import leading_text, prefix_key

CHARS = 256


def table(n: int, choice: str = "prefix_affinity", *, seed: int | None = None,
          order: list[int] | None = None) -> EndpointTable:
    """A table of model "m" with n replicas, listed in `order` (registry order differs per router)."""
    t = EndpointTable(rng=random.Random(seed))
    t.choice = choice
    t.update({"m": [{"replica_id": f"replica-{i}", "url": f"http://h:{8000 + i}", "ongoing": 0}
                    for i in (order or range(n))]})
    return t


def chat(document: str, question: str = "要点は何ですか。") -> dict:
    return {"model": "m", "messages": [
        {"role": "system", "content": "次の資料に基づいて答えてください。\n" + document},
        {"role": "user", "content": question}]}


def doc(i: int) -> str:
    return f"資料{i}: " + "行政手続のデジタル化について。" * 40


def key_of(payload: dict, operation: str = "chat") -> int | None:
    return prefix_key(operation, payload, CHARS)


def test_same_prefix_same_key_different_suffix_ignored():
    a, b = key_of(chat(doc(1), "質問A")), key_of(chat(doc(1), "質問B"))
    assert a is not None and a == b
    assert key_of(chat(doc(2))) != a
    # shorter than the key length: no key (little prefill to save; least loaded)
    assert key_of(chat("短い")) is None
    # the role is part of the key: the same text as a user turn renders differently
    as_user = {"messages": [{"role": "user", "content": chat(doc(1))["messages"][0]["content"]}]}
    assert key_of(as_user) != a


def test_key_from_each_operation():
    text = doc(3)
    assert key_of({"prompt": text}, "completions") == key_of({"prompt": [text, "x"]}, "completions")
    assert key_of({"prompt": list(range(300))}, "completions") is not None
    assert key_of({"input": text, "instructions": "短い指示"}, "responses") is not None
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    assert key_of(parts) == key_of({"messages": [{"role": "user", "content": text}]})
    # pooling operations have no prefix key (least loaded)
    for op in ("embeddings", "rerank", "score"):
        assert key_of({"input": text}, op) is None
    assert key_of({}, "chat") is None and key_of({"messages": "bad"}, "chat") is None
    assert leading_text("chat", chat(doc(1)), CHARS) is not None
    assert len(leading_text("chat", chat(doc(1)), CHARS)) == CHARS


def test_same_key_same_replica_in_independent_tables():
    """Two routers (separate tables, their own randomness, replicas listed in another
    order) send each key to the same replica, with no shared state."""
    one = table(4, seed=1)
    two = table(4, seed=2, order=[3, 1, 0, 2])
    for i in range(50):
        key = key_of(chat(doc(i)))
        assert one.pick("m", key=key).replica_id == two.pick("m", key=key).replica_id
        # and a key keeps its replica while loads stay balanced
        assert one.pick("m", key=key).replica_id == one.pick("m", key=key).replica_id


def test_different_keys_spread_over_replicas():
    t = table(4)
    picks = Counter(t.pick("m", key=key_of(chat(doc(i)))).replica_id for i in range(400))
    assert set(picks) == {f"replica-{i}" for i in range(4)}
    assert all(60 <= n <= 140 for n in picks.values()), picks


def test_spills_to_the_keys_next_replica_when_over_the_bound():
    t = table(3)
    key = key_of(chat(doc(7)))
    home = t.pick("m", key=key)
    home.inflight = 4  # 4 of 4 in flight: (4+1) > ceil(1.5 * 5 / 3) = 3
    spill = t.pick("m", key=key)
    assert spill is not home
    # every router spills the same key to the same second replica
    other = table(3, seed=9, order=[2, 0, 1])
    other.by_model["m"][[ep.replica_id for ep in other.by_model["m"]].index(home.replica_id)].inflight = 3
    assert other.pick("m", key=key).replica_id == spill.replica_id
    # within the bound the affinity replica is kept though it is busier than the others
    home.inflight = 1
    assert t.pick("m", key=key) is home
    for ep in t.by_model["m"]:  # under load the bound scales with the mean: 7 < ceil(1.5 * 15 / 3)
        ep.inflight = 7 if ep is home else 4
    assert t.pick("m", key=key) is home
    for ep in t.by_model["m"]:
        ep.inflight = 0
    # reported in-flight counts (other routers' requests) count too
    home.reported_ongoing = 3
    assert t.pick("m", key=key) is not home


def test_choices_are_counted_by_outcome_for_the_metrics():
    t = table(2)
    key = key_of(chat(doc(3)))
    home = t.pick("m", key=key)
    home.inflight = 5
    t.pick("m", key=key)  # spilled
    t.pick("m", key=key, slots=1)  # home over its slots, the other idle: spilled
    for ep in t.by_model["m"]:
        ep.inflight = 5
    t.pick("m", key=key, slots=2)  # saturated
    t.pick("m", key=None)
    assert t.choices == {("m", "home"): 1, ("m", "spilled"): 2, ("m", "saturated"): 1,
                         ("m", "unkeyed"): 1}
    rr = table(2, "round_robin")
    rr.pick("m", key=key)
    assert not rr.choices  # counted under prefix_affinity only


def test_slots_bound_saturation_and_least_loaded_fallback():
    t = table(2)
    key = key_of(chat(doc(11)))
    home = t.pick("m", key=key)
    other = next(ep for ep in t.by_model["m"] if ep is not home)
    home.inflight, other.inflight = 3, 2
    assert t.pick("m", key=key, slots=8) is home  # within both bounds
    assert t.pick("m", key=key, slots=3) is other  # the home replica's slots are full
    other.inflight = 5  # every replica above its slots: the least loaded
    assert t.pick("m", key=key, slots=2) is home
    home.inflight = 9
    assert t.pick("m", key=key, slots=2) is other


def test_no_key_means_least_loaded():
    t = table(3)
    t.by_model["m"][0].inflight = 50
    picks = Counter(t.pick("m", key=None).replica_id for _ in range(600))
    assert picks["replica-0"] == 0 and picks["replica-1"] > 150 and picks["replica-2"] > 150


def test_ejected_and_excluded_replicas_are_skipped():
    t = table(3)
    key = key_of(chat(doc(5)))
    home = t.pick("m", key=key)
    t.eject(home, "test")
    moved = t.pick("m", key=key)
    assert moved is not home and t.pick("m", key=key) is moved
    # a retry excludes what it tried; the key goes on to its next replica
    third = t.pick("m", key=key, exclude={moved.replica_id})
    assert third not in (home, moved)
    assert t.pick("m", key=key, exclude={moved.replica_id, third.replica_id}) is None
    # readmitted: the key goes home again (rendezvous hashing moves only the ejected share)
    t.readmit(home)
    assert t.pick("m", key=key) is home
    # a replica that leaves the registry moves only its own keys
    keys = [key_of(chat(doc(i))) for i in range(200)]
    before = {k: t.pick("m", key=k).replica_id for k in keys}
    t.update({"m": [{"replica_id": f"replica-{i}", "url": f"http://h:{8000 + i}"} for i in (0, 1)]})
    after = {k: t.pick("m", key=k).replica_id for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "replica-2")


def test_round_robin_and_least_loaded_policies():
    t = table(3, "round_robin")
    t.by_model["m"][0].inflight = 99  # round robin ignores load and keys
    key = key_of(chat(doc(1)))
    assert [t.pick("m", key=key).replica_id for _ in range(6)] == [f"replica-{i % 3}" for i in range(6)]
    t = table(3, "least_loaded")
    t.by_model["m"][0].inflight = 99
    picks = Counter(t.pick("m", key=key).replica_id for _ in range(300))
    assert picks["replica-0"] == 0 and len(picks) == 2  # the key is ignored


def test_settings_default_and_validation():
    s = RouterSettings()
    assert s.replica_choice == "prefix_affinity" and s.prefix_affinity_balance_factor >= 1
    with pytest.raises(ValueError):
        RouterSettings(replica_choice="random")
    with pytest.raises(ValueError):
        RouterSettings(prefix_affinity_balance_factor=0.5)


def test_key_cost_is_small():
    """Measured, not asserted as an absolute time: the key of a RAG request costs a few
    microseconds, about the cost of hashing its leading characters (printed for the docs)."""
    payload = chat(doc(1) * 4)
    settings = RouterSettings()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        prefix_key("chat", payload, settings.prefix_affinity_chars)
    per_key_us = (time.perf_counter() - start) / n * 1e6
    t = table(4)
    key = prefix_key("chat", payload, settings.prefix_affinity_chars)
    start = time.perf_counter()
    for _ in range(n):
        t.pick("m", key=key, slots=64)
    per_pick_us = (time.perf_counter() - start) / n * 1e6
    print(f"prefix key {per_key_us:.1f} us, affinity pick of 4 replicas {per_pick_us:.1f} us")
    assert per_key_us > 0 and per_pick_us > 0
