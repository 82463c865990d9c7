"""Vendor endpoints: declaration, the link to the vendor, the circuit, the contract counters
(against real Redis and Redis Cluster), estimated usage and cost."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import ValidationError

from cluster.spec.schema import parse_spec
from serving.config import ModelRoute
from serving.config.vendor import Price, VendorEndpoint, VendorLimits, safe_url
from serving.router.endpoints import EndpointTable
from serving.router.metering import StreamMeter
from serving.store import StoreKeyspace, async_client, sync_client
from serving.tenancy.reports import usage
from serving.vendor.contract import ContractLimiter, ContractRefused
from serving.vendor.link import VendorLink, estimate_usage, prompt_chars
from tests.servers import paused

TERMS = {"provider": "ベンダー", "contract": "C-1"}


def endpoint(**extra) -> VendorEndpoint:
    return VendorEndpoint.model_validate({"base_url": "https://llm.example.go.jp/v1",
                                          "credential_env": "VENDOR_KEY", "terms": TERMS, **extra})


@pytest.mark.parametrize("fields, message", [
    ({"base_url": "http://llm.example.go.jp/v1"}, "plain http"),
    ({"base_url": "https://user:pw@llm.example.go.jp/v1"}, "must not carry credentials"),
    ({"base_url": "https://llm.example.go.jp/v1?key=abc"}, "must not carry credentials"),
    ({"base_url": "ftp://llm.example.go.jp"}, "http(s) URL"),
    ({"base_url": "https://llm.example.go.jp/v1/"}, "must not end with '/'"),
    ({"terms": {"provider": "x", "trains_on_inputs": True}}, "trains on government inputs"),
    ({"egress": {"pod_labels": {"app": "x"}}}, "egress needs cidrs"),
    ({"egress": {"cidrs": ["10.0.0.300/24"]}}, "does not appear to be an IPv4 or IPv6 network"),
    ({"credential_env": "lower-case"}, "credential_env"),
])
def test_declarations_that_would_leak_or_mislead_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        endpoint(**fields)


def test_plain_http_only_when_declared_in_cluster():
    ep = endpoint(base_url="http://plamo2.plamo.svc:8000/v1", allow_plaintext=True)
    assert (ep.host, ep.port) == ("plamo2.plamo.svc", 8000)
    assert safe_url("https://h.example:8443/v1?x=1") == "https://h.example:8443/v1"


LOCAL_SPEC = {
    "name": "t", "engine": {"device": "cpu"}, "auth": {"enabled": False},
    "models": [
        {"id": "local", "source": {"dev_model": {"family": "llama"}}, "max_model_len": 2048},
        {"id": "vendor", "max_model_len": 8192, "max_confidentiality": 2,
         "price": {"input_yen_per_million": 100, "output_yen_per_million": 400},
         "source": {"endpoint": {"base_url": "https://v.example/v1", "terms": TERMS,
                                 "limits": {"max_concurrency": 12, "requests_per_minute": 600}}}},
    ],
    "aliases": {"chat": ["vendor", "local"]},
}


def test_spec_endpoint_models_have_no_deployment_and_their_contract_is_their_capacity(tmp_path):
    from cluster.render.serve_config import app_args

    spec = parse_spec(LOCAL_SPEC)
    assert [m.id for m in spec.self_hosted()] == ["local"] and [m.id for m in spec.endpoints()] == ["vendor"]
    args = app_args(spec, tmp_path).to_config()
    assert [c["model_loading_config"]["model_id"] for c in args["llm_configs"]] == ["local"]
    routes = {m["id"]: ModelRoute.model_validate(m) for m in args["serving"]["models"]}
    assert routes["vendor"].source == "endpoint" and routes["local"].source == "self-hosted"
    assert (routes["vendor"].max_ongoing_per_replica, routes["vendor"].max_queued_per_replica) == (12, 12)
    assert routes["vendor"].price.cost_yen(1_000_000, 500_000) == 300.0


def test_spec_refuses_engine_settings_on_an_endpoint_model():
    bad = json.loads(json.dumps(LOCAL_SPEC))
    bad["models"][1]["replicas"] = {"min": 2, "max": 2}
    with pytest.raises(Exception, match="a source.endpoint model takes its capacity"):
        parse_spec(bad)
    bad["models"][1].pop("replicas")
    bad["models"][1]["source"]["uri"] = "s3://b/p"
    with pytest.raises(Exception, match="set exactly one of"):
        parse_spec(bad)


def test_gpu_plan_reports_endpoints_as_not_sized():
    from pathlib import Path

    import yaml

    from cluster.sizing.cluster_plan import plan_cluster
    from cluster.spec.schema import DEFAULT_SPEC_PATH

    example = DEFAULT_SPEC_PATH.parent / "gov-cloud-example.yaml"
    data = yaml.safe_load(example.read_text())
    data["models"].append({"id": "plamo-2-api", "max_model_len": 32768,
                           "source": {"endpoint": {"base_url": "https://plamo.example.go.jp/v1",
                                                   "terms": {"provider": "PFN"},
                                                   "limits": {"max_concurrency": 32,
                                                              "tokens_per_minute": 100000}}}})
    spec = parse_spec(data)
    plan = plan_cluster(spec, Path(example).parent)
    assert "plamo-2-api" not in [m.model_id for m in plan.models]
    (ep,) = [e for e in plan.to_json()["endpoints"] if e["model"] == "plamo-2-api"]
    assert ep == {"model": "plamo-2-api", "sized": False, "provider": "PFN", "max_concurrency": 32,
                  "requests_per_minute": None, "tokens_per_minute": 100000, "max_confidentiality": 1}


def test_link_sends_the_vendor_key_and_nothing_of_the_client():
    link = VendorLink("plamo", endpoint(upstream_model="plamo-2.0-prime"), environ={"VENDOR_KEY": "sk-v"})
    assert link.problem is None
    assert link.headers("rid") == {"Content-Type": "application/json", "X-Request-Id": "rid",
                                   "Authorization": "Bearer sk-v"}
    assert link.url("/v1/chat/completions") == "https://llm.example.go.jp/v1/chat/completions"
    assert link.health_url == "https://llm.example.go.jp/v1/models"
    body = json.loads(link.body({"model": "plamo", "messages": [], "stream": True,
                                 "stream_options": {"continuous_usage_stats": True}}, stream=True))
    assert body["model"] == "plamo-2.0-prime"
    assert body["stream_options"] == {"include_usage": True}  # OpenAI-style servers reject more
    answer = b'data: {"id":"x","model":"plamo-2.0-prime","choices":[]}\n\n'
    assert link.renamed(answer) == b'data: {"id":"x","model":"plamo","choices":[]}\n\n'
    per_chunk = VendorLink("plamo", endpoint(stream_usage="per_chunk"), environ={"VENDOR_KEY": "k"})
    assert json.loads(per_chunk.body({"model": "plamo"}, stream=True))["stream_options"] == {
        "include_usage": True, "continuous_usage_stats": True}


def test_a_link_without_its_credential_stays_out_of_rotation():
    link = VendorLink("plamo", endpoint(), environ={})
    assert "VENDOR_KEY is not set" in link.problem
    table = EndpointTable()
    ep = table.add_vendor(link)
    assert ep.ejected and table.replica_count("plamo") == 0
    assert table.retry_after_s("plamo") == 5  # an endless hold is not a Retry-After


def test_vendor_endpoints_survive_registry_snapshots_and_trip_like_a_circuit():
    table = EndpointTable()
    ep = table.add_vendor(VendorLink("plamo", endpoint(open_s=0.2, probe_interval_s=30),
                                     environ={"VENDOR_KEY": "k"}))
    table.update({"local": [{"replica_id": "r1", "url": "http://127.0.0.1:1"}]})
    assert table.pick("plamo") is ep and table.replica_count("local") == 1
    now = time.monotonic()
    assert table.due_for_probe(ep, now)  # never probed yet
    ep.next_probe_at = now + 30
    assert not table.due_for_probe(ep, now)  # a closed circuit is probed every probe_interval_s
    table.eject(ep, "vendor failed (HTTP 503)", failed=True)
    assert table.state(ep) == "open" and table.pick("plamo") is None
    assert not table.due_for_probe(ep)
    time.sleep(0.25)
    assert table.state(ep) == "half-open" and table.due_for_probe(ep)
    table.readmit(ep)
    table.eject(ep, "half-open probe failed")
    assert ep.ejected_until - time.monotonic() > 0.3  # the second opening lasts twice as long
    assert table.take_reports() == []  # vendor circuits are each router's own


def test_prompt_estimates_and_usage_without_a_usage_object():
    chat = {"messages": [{"role": "user", "content": "個人番号"},
                         {"role": "user", "content": [{"type": "text", "text": "abc"}]}]}
    assert prompt_chars("chat", chat) == 7
    assert prompt_chars("completions", {"prompt": ["ab", "cde"]}) == 5
    body = json.dumps({"choices": [{"message": {"content": "はい、承知", "tool_calls": [
        {"function": {"name": "f", "arguments": "{}"}}]}}]}).encode()
    assert estimate_usage("chat", chat, body) == {"prompt_tokens": 7, "completion_tokens": 8,
                                                  "total_tokens": 15}


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def test_a_cut_stream_without_usage_is_billed_by_chunks_and_flagged():
    meter = StreamMeter(prompt_estimate=20)
    role = _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    tokens = b"".join(_event({"choices": [{"index": 0, "delta": {"content": t}}]}) for t in ["申", "", "請"])
    out, seen = meter.scan(role + tokens)
    assert out == role + tokens
    meter.commit(seen)
    assert meter.delivered() == {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
    assert meter.estimated
    final = _event({"choices": [], "usage": {"prompt_tokens": 9, "total_tokens": 12, "completion_tokens": 3}})
    out, seen = meter.scan(final)
    meter.commit(seen)
    assert meter.delivered()["prompt_tokens"] == 9  # the vendor's own count wins once it arrives


def test_usage_report_prices_each_model():
    class Ledger:
        def hgetall(self, key):
            return {b"requests": b"3", b"total_tokens": b"3000",
                    b"model|vendor|prompt_tokens": b"2000", b"model|vendor|completion_tokens": b"500",
                    b"model|vendor|requests": b"2", b"model|local|prompt_tokens": b"400",
                    b"model|local|completion_tokens": b"100", b"model|local|requests": b"1"}

    report = usage(Ledger(), StoreKeyspace("t"), "city", "2026-12",
                   {"vendor": Price(input_yen_per_million=100, output_yen_per_million=400)})
    assert report["models"]["vendor"]["cost_yen"] == 0.4
    assert report["models"]["local"]["cost_yen"] is None
    assert report["cost_yen"] == 0.4


class Clock:
    def __init__(self) -> None:
        self.now = (time.time() // 60) * 60 + 1

    def __call__(self) -> float:
        return self.now


def limiters(server, limits: VendorLimits, n: int = 2, timeout_s: float = 2.0):
    settings = server.settings(f"v{time.time_ns()}", timeout_s=timeout_s)
    clock = Clock()
    keys = StoreKeyspace(settings.namespace)
    return [ContractLimiter("plamo", limits, async_client(settings), keys, timeout_s=timeout_s, clock=clock)
            for _ in range(n)], clock, settings


async def _outcomes(calls) -> list:
    async def one(call):
        try:
            return await call
        except ContractRefused as exc:
            return exc
    return await asyncio.gather(*(one(c) for c in calls))


def test_contract_requests_per_minute_are_exact_across_routers(store_server):
    # a generous store timeout: this test is about counting, the lost answers are the next test's
    (a, b), clock, _ = limiters(store_server, VendorLimits(requests_per_minute=5), timeout_s=10)

    async def scenario():
        burst = await _outcomes([(a if i % 2 else b).acquire(10, f"r{i}") for i in range(12)])
        clock.now += 60
        return burst, await _outcomes([a.acquire(10, "later")])

    got, (later,) = asyncio.run(scenario())
    refused = [g for g in got if isinstance(g, ContractRefused)]
    assert len(got) - len(refused) == 5, got
    assert {r.limit for r in refused} == {"requests_per_minute"}
    assert all(1 <= r.retry_after_s <= 60 for r in refused)
    assert not isinstance(later, ContractRefused)  # a new minute, a new window


def test_contract_counts_a_request_once_whatever_happened_to_its_answer(store_server):
    """A call the client retried after the first had counted (redis-py retries on timeouts)
    counts the request once; a request refused because its answer was lost (the store stopped
    mid-call) is taken back in the background once the store answers again, whichever of the
    two runs first."""
    limits = VendorLimits(requests_per_minute=3, tokens_per_minute=1000)
    # a generous timeout for the calls that must succeed on a loaded host; a short one for the
    # call whose answer is lost (the same counters: one namespace, one clock)
    (a,), clock, settings = limiters(store_server, limits, n=1, timeout_s=10)
    hasty = ContractLimiter("plamo", limits, async_client(settings), StoreKeyspace(settings.namespace),
                            timeout_s=0.5, clock=clock)
    r = sync_client(settings)

    def counters() -> tuple[int, int]:
        (rpm,) = r.scan_iter(match=f"{settings.namespace}:vendor:*rpm*")
        (tpm,) = r.scan_iter(match=f"{settings.namespace}:vendor:*tpm*")
        return int(r.get(rpm) or 0), int(r.get(tpm) or 0)

    async def go():
        await a.acquire(100, "twice")
        await a.acquire(100, "twice")  # the retried call: already counted
        once = counters()
        # an open connection to the counters' node, so the call below is sent before it stalls
        await hasty._r.get(hasty._windows(clock())[0])
        with paused(*store_server.pids):
            (lost,) = await _outcomes([hasty.acquire(100, "lost")])
        # the stopped store still held the call and runs it when it resumes; the limiter's
        # take-back runs before or after it (both were queued): either way nothing stays counted
        for _ in range(150):
            if hasty._uncounting == set():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        (marks,) = r.scan_iter(match=f"{settings.namespace}:vendor:*admitted*")
        seen = counters(), r.hget(marks, "lost")
        # the other order: the take-back runs before the admission that was still on its way;
        # the admission then finds the voided mark and counts nothing
        await a._uncount_when_reachable(list(a._windows(clock())), ["early", 1, 100])
        await a.acquire(100, "early")
        assert counters() == once
        rest = await _outcomes([a.acquire(100, f"rest{i}") for i in range(3)])
        return once, lost, seen, rest

    once, lost, seen, rest = asyncio.run(go())
    assert once == (1, 100)
    assert isinstance(lost, ContractRefused) and lost.limit == "store"
    assert seen == ((1, 100), b"0"), seen  # taken back (voided), counted once: `twice` only
    # 3 a minute: `twice` holds one, `lost` and `early` none, so two more are admitted and a
    # third (whichever of the concurrent three comes last) refused
    refused = [x for x in rest if isinstance(x, ContractRefused)]
    assert len(refused) == 1 and refused[0].limit == "requests_per_minute", rest


def test_contract_tokens_count_in_flight_requests_and_settle_to_real_usage(store_server):
    (a, b), clock, settings = limiters(store_server, VendorLimits(tokens_per_minute=1000))

    async def scenario():
        t1 = await a.acquire(400, "t1")
        t2 = await b.acquire(400, "t2")
        with pytest.raises(ContractRefused, match="800 of the contract's 1000"):
            await a.acquire(400, "t3")  # in flight: 800 counted, nothing settled yet
        with pytest.raises(ContractRefused, match="lower max_tokens"):
            await b.acquire(1500, "t4")  # could never fit
        await a.settle(t1, 30)
        await b.settle(t2, 50)
        return await a.acquire(900, "t5")

    ticket = asyncio.run(scenario())
    assert ticket.counted == 900
    r = sync_client(settings)
    (tpm_key,) = [k for k in r.scan_iter(match=f"{settings.namespace}:vendor:*tpm*")]
    assert int(r.get(tpm_key)) == 30 + 50 + 900


def test_contract_fails_closed_when_the_store_does_not_answer(store_server):
    (a,), _, _ = limiters(store_server, VendorLimits(requests_per_minute=100), n=1, timeout_s=0.3)
    with paused(*store_server.pids):
        (got,) = asyncio.run(_outcomes([a.acquire(10, "r")]))
    assert isinstance(got, ContractRefused) and got.limit == "store"


def test_render_refuses_one_credential_variable_for_two_secrets():
    from pathlib import Path

    import yaml

    from cluster.render.helm_values import HelmValuesError, helm_values
    from cluster.spec.schema import DEFAULT_SPEC_PATH

    example = DEFAULT_SPEC_PATH.parent / "gov-cloud-example.yaml"
    data = yaml.safe_load(example.read_text())
    vendors = [m for m in data["models"] if "endpoint" in m["source"]
               and m["source"]["endpoint"].get("credential_env")]
    assert len(vendors) >= 2
    first, second = vendors[0]["source"]["endpoint"], vendors[1]["source"]["endpoint"]
    assert first["secret"] != second["secret"]
    second["credential_env"] = first["credential_env"]
    with pytest.raises(HelmValuesError, match="one variable holds one key"):
        helm_values(parse_spec(data), Path(example).parent, source=str(example))
