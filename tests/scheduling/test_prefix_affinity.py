"""Prefix-cache-aware replica choice through the real stack (docs/scheduling.md, prefix-affinity).

The shipped scaling spec runs `tiny-llama-ja` on exactly 2 replicas with the router's default
`replica_choice: prefix_affinity`. Requests sharing a long prefix must all land on one replica,
which then answers them from vLLM's prefix cache: read from each replica's own data-plane
/metrics (vllm:prefix_cache_queries / vllm:prefix_cache_hits, in tokens), so the test sees
where each request was computed and whether its prefix was reused.
"""

from __future__ import annotations

import urllib.request

from cluster.devmodels import JAPANESE_CORPUS
from serving.config import RouterSettings

MODEL = "tiny-llama-ja"
REQUESTS = 6


def cache_counters(stack) -> dict[str, tuple[float, float]]:
    """(prefix-cache hits, queries) per replica URL of the model."""
    out = {}
    for endpoint in stack.endpoints(MODEL, fresh=True):
        hits = queries = 0.0
        with urllib.request.urlopen(endpoint["url"] + "/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("vllm:prefix_cache_hits_total{"):
                    hits += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:prefix_cache_queries_total{"):
                    queries += float(line.rsplit(" ", 1)[1])
        out[endpoint["url"]] = (hits, queries)
    return out


def document(n: int) -> str:
    """A retrieved document longer than the prefix key (about 1 token per character here)."""
    chars = RouterSettings().prefix_affinity_chars + 400
    text = f"【資料{n}】"
    i = n
    while len(text) < chars:
        text += JAPANESE_CORPUS[i % 12]
        i += 1
    return text


def test_same_prefix_lands_on_one_replica_and_hits_its_cache(scaling_stack, scaling_client):
    before = cache_counters(scaling_stack)
    assert len(before) == 2, f"{MODEL} should run exactly 2 replicas: {list(before)}"
    context = "次の資料に基づいて、質問に簡潔に答えてください。\n" + document(1)
    questions = ["要点は何ですか。", "期限はいつですか。", "担当部署はどこですか。",
                 "対象者は誰ですか。", "手続の方法は。", "注意点は何ですか。"]
    for question in questions[:REQUESTS]:
        answer = scaling_client.chat.completions.create(
            model=MODEL, max_tokens=2, temperature=0,
            messages=[{"role": "system", "content": context}, {"role": "user", "content": question}])
        assert answer.choices[0].message is not None
    after = cache_counters(scaling_stack)
    queried = {url: after[url][1] - before[url][1] for url in before}
    hits = {url: after[url][0] - before[url][0] for url in before}
    home = max(queried, key=queried.get)
    other = next(url for url in queried if url != home)
    # every request was computed on one replica: the other saw none of them
    assert queried[other] == 0, f"requests spread over both replicas: {queried}"
    # and all but the first reused the prefix from that replica's cache
    prompt_tokens = queried[home] / REQUESTS
    assert hits[home] >= 0.5 * (REQUESTS - 1) * prompt_tokens, (hits, queried)
