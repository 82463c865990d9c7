"""Which replica of a model a request goes to: prefix affinity, least loaded or round robin.

vLLM keeps the KV cache of recent prompts per replica (automatic prefix
caching): a request whose leading tokens a replica has already computed skips
that part of its prefill. RAG traffic repeats long shared prefixes (the same
retrieved document asked several questions, a long fixed system prompt, a
growing conversation), so sending requests that share a prefix to the same
replica saves most of their prefill, where least-loaded or round-robin choice
computes each prefix on every replica.

`prefix_affinity` (the default, docs/scheduling.md "prefix-affinity"):

* the request's *prefix key* is a 64-bit hash of the first
  `router.prefix_affinity_chars` characters of its leading content (chat
  messages' roles and text in order, a completion's prompt, a response's
  instructions and input), computed once per request (`prefix_key`). A
  request shorter than that has little prefill to save and no key;
  embeddings and rerank requests have none either (short inputs; pooling
  models mostly cannot cache prefixes);
* the replicas are ranked by rendezvous (highest-random-weight) hashing of
  the key with each replica id, so every router replica ranks them the same
  way without sharing any state, and a replica that joins or leaves moves
  only its own share of the keys;
* *sticky until saturated* (bounded-load consistent hashing, as HAProxy's
  `hash-balance-factor`): the first replica in that order takes the request
  unless it would then hold more than `prefix_affinity_balance_factor` times
  the mean load of the model's replicas (the mean taken as at least 1), or
  more than the model's
  per-replica slots; then the next replica in the same order does (so a hot
  prefix is cached on a second replica, the same one for every router), and
  when every replica is over its bound, the least loaded one.

Keys and replica seeds are cryptographic hashes (SHA-1, BLAKE2b), never Python's `hash()` (salted per process, so
two routers would disagree). The prefix text is never kept, logged or
exported; the key lives only as a local variable of the request.

`least_loaded`: power of two choices on outstanding requests (two random
replicas, the less loaded wins), which avoids herding when several routers
act on the same slightly stale loads. `round_robin`: each router takes the
model's replicas in turn (a baseline for benchmarks).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from hashlib import blake2b, sha1
from typing import Any, Literal, Protocol, TypeVar


class Replica(Protocol):
    """What a choice reads of a replica (serving/router/endpoints.py Endpoint)."""

    replica_id: str
    seed: int  # replica_seed(replica_id)

    @property
    def load(self) -> int: ...


ReplicaT = TypeVar("ReplicaT", bound=Replica)
ReplicaChoice = Literal["prefix_affinity", "least_loaded", "round_robin"]
_MASK = (1 << 64) - 1
_SEP = "\x1f"  # between a role and its text: "system" + text never equals "sys" + "temtext"


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text (and image URLs) of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                    continue
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if isinstance(url, str):
                    out.append(url)
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    return ""


def _messages_text(messages: Any, chars: int) -> list[str]:
    pieces: list[str] = []
    size = 0
    if isinstance(messages, str):
        return [messages]
    if not isinstance(messages, list):
        return pieces
    for message in messages:
        if not isinstance(message, dict):
            continue
        text = _text_of(message.get("content"))
        role = str(message.get("role") or message.get("type") or "")
        pieces += [role, _SEP, text, _SEP]
        size += len(role) + len(text) + 2
        if size >= chars:
            break
    return pieces


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first
        if isinstance(first, int):  # token ids: compared as their decimal text
            return ",".join(str(t) for t in prompt)
        if isinstance(first, list):
            return ",".join(str(t) for t in first)
    return ""


def leading_text(operation: str, payload: dict[str, Any] | None, chars: int) -> str | None:
    """The first `chars` characters of what the engine will see first, or None (no key).

    None for operations without prefix caching (embeddings, score, rerank) and for
    requests shorter than `chars`: they have little prefill to save, and a short
    conversation's text changes from turn to turn before it reaches `chars`.
    """
    if not payload:
        return None
    if operation == "chat":
        pieces = _messages_text(payload.get("messages"), chars)
    elif operation == "completions":
        pieces = [_prompt_text(payload.get("prompt"))]
    elif operation == "responses":
        instructions = payload.get("instructions")
        pieces = [instructions if isinstance(instructions, str) else "", _SEP]
        pieces += _messages_text(payload.get("input"), chars)
    else:
        return None
    text = "".join(pieces)
    if len(text) < chars:
        return None
    return text[:chars]


def prefix_key(operation: str, payload: dict[str, Any] | None, chars: int) -> int | None:
    """A 64-bit key of the request's leading `chars` characters, or None (see leading_text)."""
    text = leading_text(operation, payload, chars)
    if text is None:
        return None
    # UTF-16 encodes the text about twice as fast as UTF-8 here; SHA-1 is OpenSSL's fastest
    # hash on these machines (placement needs spread, not collision resistance)
    digest = sha1(text.encode("utf-16-le", "surrogatepass"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big")


def replica_seed(replica_id: str) -> int:
    """A replica's fixed 64-bit weight seed: the same in every router process."""
    return int.from_bytes(blake2b(replica_id.encode(), digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijection that spreads every input bit over the output."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def rendezvous_order(key: int, eps: Sequence[ReplicaT]) -> list[ReplicaT]:
    """The replicas by decreasing rendezvous weight for `key` (ties by replica id)."""
    return sorted(eps, key=lambda ep: (_mix(key ^ ep.seed), ep.replica_id), reverse=True)


def load_bound(eps: Sequence[ReplicaT], factor: float) -> int:
    """The most requests (this one included) a replica may hold before a key spills over:
    `factor` x the mean load once this request is placed, rounded up.

    The mean counts as at least one request per replica: a nearly idle model keeps a
    prefix on its replica (one running a request or two is far from saturated, and a
    spill costs a whole prefill), where the plain bound would spill the second request
    of a prefix as soon as the other replicas are idle.
    """
    mean = (sum(ep.load for ep in eps) + 1) / len(eps)
    return math.ceil(factor * max(mean, 1.0))


def least_loaded(eps: Sequence[ReplicaT], rng: random.Random) -> ReplicaT:
    """Power of two choices: the less loaded of two random replicas."""
    if len(eps) == 1:
        return eps[0]
    a, b = rng.sample(eps, 2)
    return a if a.load <= b.load else b


#: How an affinity choice went (the `choice` label of govllm_replica_choices_total): the
#: key's own replica, a later one in its order (the first was over its bound), the least
#: loaded (every replica over its bound), or the least loaded for want of a key.
OUTCOMES = ("home", "spilled", "saturated", "unkeyed")


def by_affinity(eps: Sequence[ReplicaT], key: int, *, factor: float,
                slots: int | None) -> tuple[ReplicaT, str]:
    """The first replica in the key's rendezvous order that stays within its bounds, and
    which of OUTCOMES that was."""
    if len(eps) == 1:
        return eps[0], "home"
    bound = load_bound(eps, factor)
    if slots is not None:
        bound = min(bound, slots)
    home = max(eps, key=lambda ep: (_mix(key ^ ep.seed), ep.replica_id))
    if home.load + 1 <= bound:  # the common case: no sort
        return home, "home"
    for ep in rendezvous_order(key, eps)[1:]:
        if ep.load + 1 <= bound:
            return ep, "spilled"
    return min(eps, key=lambda ep: ep.load), "saturated"  # admission queues beyond this
