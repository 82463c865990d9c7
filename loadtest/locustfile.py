"""govllm load tests: Japanese administrative workloads, LLM metrics, load shapes, SLO gates.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 2 -t 2m \\
        --csv loadtest/results/run --html loadtest/results/run.html --json-file loadtest/results/run_stats.json

Scenarios (user classes; weights in brackets; each class's task carries the tag in quotes, so
`--tags chat rag` or `LOCUST_TAGS` selects scenarios and the other classes are not spawned):

* StaffChatUser [50] "chat": multi-turn streaming conversations of everyday work.
* DocumentTaskUser [10] "document": summarising/drafting over 2k-8k token documents.
* RagUser [20] "rag": a retrieved context (one of --rag-documents, identical for every user)
  plus a question.
* MunicipalApiUser [10] "municipal": municipal tenants' own keys, small budgets; 429 = QUOTA.
* MixedModelUser [10] "mixed": every model and alias from /v1/models in turn.

Per request it fires locust request events (request_type TTFT, TPOT, E2E, TOKENS, TOK/S,
GOODPUT; name "<scenario> <model>") next to the HTTP row, writes one JSON line to the raw log,
and at the end writes a JSON summary with exact percentiles and the SLO verdict (exit code 3
when a gate fails). Options and their environment variables: docs/loadtest.md, or
`locust -f loadtest/locustfile.py --help` (the "Custom arguments" group).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import gevent
from gevent.lock import Semaphore
from locust import LoadTestShape, events, tag, task
from locust.contrib.fasthttp import FastHttpUser
from locust.runners import MasterRunner, WorkerRunner

from loadtest.llmload import prompts
from loadtest.llmload.metrics import RequestRecord, read_records, summarise, tokens_per_s, tpot_ms
from loadtest.llmload.prompts import TokenBudget
from loadtest.llmload.shapes import DayProfile, Spike, Steady, Step
from loadtest.llmload.slo import SLOSet, evaluate, load_slo
from loadtest.llmload.stream import StreamMeter
from loadtest.llmload.tokens import budget_from_tokenizer, parse_tokenizers

log = logging.getLogger("govllm.loadtest")
RESULTS_DIR = Path("loadtest/results")
SLO_FAILED_EXIT = 3
QUOTA = "QUOTA"


# ---------------------------------------------------------------- options


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    g = parser  # locust lists these under "Custom arguments"; is_secret needs the parser itself
    g.add_argument("--api-key", env_var="LOADTEST_API_KEY", default="", is_secret=True,
                   help="API key for chat, document, RAG and mixed users (default: --api-key-file)")
    g.add_argument("--api-key-file", env_var="LOADTEST_API_KEY_FILE", default=".govllm/dev-api-key",
                   help="File holding the API key (the local stack's development key by default)")
    g.add_argument("--tenant-keys", env_var="LOADTEST_TENANT_KEYS", default="",
                   help="JSON key file of municipal tenants (python -m loadtest.tenant_keys writes it)")
    g.add_argument("--slo-file", env_var="LOADTEST_SLO_FILE", default="",
                   help="SLO YAML: per-request limits (goodput) and gates; a failed gate exits 3")
    g.add_argument("--shape", env_var="LOADTEST_SHAPE", default="steady",
                   choices=["steady", "step", "spike", "day"], help="Load shape (-u is its peak)")
    g.add_argument("--step-users", env_var="LOADTEST_STEP_USERS", type=int, default=0,
                   help="step: users added per step (default: a quarter of -u)")
    g.add_argument("--step-seconds", env_var="LOADTEST_STEP_SECONDS", type=float, default=30.0)
    g.add_argument("--spike-base-users", env_var="LOADTEST_SPIKE_BASE_USERS", type=int, default=0,
                   help="spike: users outside the spike (default: a fifth of -u)")
    g.add_argument("--spike-at", env_var="LOADTEST_SPIKE_AT", type=float, default=-1,
                   help="spike: seconds into the run (default: a third of -t)")
    g.add_argument("--spike-seconds", env_var="LOADTEST_SPIKE_SECONDS", type=float, default=-1,
                   help="spike: length (default: a sixth of -t)")
    g.add_argument("--day-seconds", env_var="LOADTEST_DAY_SECONDS", type=float, default=660,
                   help="day: length of the compressed 8:00-19:00 working day")
    g.add_argument("--day-headcount", env_var="LOADTEST_DAY_HEADCOUNT", type=int, default=180_000)
    g.add_argument("--day-active-share", env_var="LOADTEST_DAY_ACTIVE_SHARE", type=float, default=0.3)
    g.add_argument("--day-minutes-per-user", env_var="LOADTEST_DAY_MINUTES_PER_USER", type=float, default=40)
    g.add_argument("--day-request-interval", env_var="LOADTEST_DAY_REQUEST_INTERVAL", type=float,
                   default=60, help="day: seconds between one person's requests in a session")
    g.add_argument("--model", env_var="LOADTEST_MODEL", default="",
                   help="Model or alias for chat/document/RAG/municipal (default: alias 'default' "
                        "if served, else the first model)")
    g.add_argument("--mixed-models", env_var="LOADTEST_MIXED_MODELS", default="",
                   help="Comma-separated names for mixed users (default: every model and alias)")
    g.add_argument("--think-time", env_var="LOADTEST_THINK_TIME", default="1-3",
                   help="Seconds between a user's requests, MIN-MAX")
    g.add_argument("--output-tokens", env_var="LOADTEST_OUTPUT_TOKENS", default="32-128",
                   help="max_tokens of chat, RAG, municipal and mixed requests, MIN-MAX")
    g.add_argument("--doc-output-tokens", env_var="LOADTEST_DOC_OUTPUT_TOKENS", default="128-256")
    g.add_argument("--doc-input-tokens", env_var="LOADTEST_DOC_INPUT_TOKENS", default="2000-8000",
                   help="Document task input length in tokens, MIN-MAX (clamped to the context)")
    g.add_argument("--rag-context-tokens", env_var="LOADTEST_RAG_CONTEXT_TOKENS", type=int, default=1500)
    g.add_argument("--rag-documents", env_var="LOADTEST_RAG_DOCUMENTS", type=int, default=1,
                   help="Distinct retrieved documents RAG users ask about (each request picks one "
                        "at random): several documents, each asked several questions")
    g.add_argument("--chat-turns", env_var="LOADTEST_CHAT_TURNS", default="2-4")
    g.add_argument("--fixed-output", env_var="LOADTEST_FIXED_OUTPUT", default="true",
                   choices=["true", "false"],
                   help="Ask for exactly max_tokens (vLLM's min_tokens + ignore_eos)")
    g.add_argument("--quota-backoff-max", env_var="LOADTEST_QUOTA_BACKOFF_MAX", type=float, default=5.0,
                   help="Longest wait after a 429 (Retry-After is honoured up to this)")
    g.add_argument("--raw-log", env_var="LOADTEST_RAW_LOG", default="",
                   help="Per-request JSON lines (default: <--csv prefix>_requests.jsonl)")
    g.add_argument("--summary-file", env_var="LOADTEST_SUMMARY_FILE", default="",
                   help="JSON summary (default: <--csv prefix>_summary.json)")
    g.add_argument("--seed", env_var="LOADTEST_SEED", type=int, default=0)
    g.add_argument("--tokenizer", env_var="LOADTEST_TOKENIZER", default="",
                   help="Count prompt tokens with the model's tokenizer instead of calibrating "
                   "through the API: PATH for every model, or MODEL=PATH,... (local files only)")


def _range(text: str, what: str) -> tuple[float, float]:
    try:
        lo, _, hi = str(text).partition("-")
        a, b = float(lo), float(hi or lo)
    except ValueError:
        raise ValueError(f"{what}: expected MIN-MAX, got {text!r}") from None
    if a < 0 or b < a:
        raise ValueError(f"{what}: expected 0 <= MIN <= MAX, got {text!r}")
    return a, b


# ---------------------------------------------------------------- run state (one per process)


@dataclass
class Settings:
    """The parsed options a user needs, read once per process at test start."""

    api_key: str
    tenant_keys: list[dict[str, str]]
    slo: SLOSet | None
    model: str
    mixed_models: list[str]
    think: tuple[float, float]
    output_tokens: tuple[int, int]
    doc_output_tokens: tuple[int, int]
    doc_input_tokens: tuple[int, int]
    rag_context_tokens: int
    rag_documents: int
    chat_turns: tuple[int, int]
    fixed_output: bool
    quota_backoff_max: float
    seed: int
    tokenizers: dict[str, str] = field(default_factory=dict)  # model (or "*") -> tokenizer path


def _int_range(text: str, what: str) -> tuple[int, int]:
    a, b = _range(text, what)
    return int(a), int(b)


def _read_api_key(opts) -> str:
    if opts.api_key:
        return opts.api_key.strip()
    path = Path(opts.api_key_file) if opts.api_key_file else None
    if path and path.exists():
        return path.read_text(encoding="utf-8").strip()
    return ""


def _read_tenant_keys(path: str) -> list[dict[str, str]]:
    if not path:
        return []
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    tenants = data.get("tenants") if isinstance(data, dict) else None
    if not isinstance(tenants, list) or not all(isinstance(t, dict) and t.get("key") for t in tenants):
        raise ValueError(f"{path}: expected {{\"tenants\": [{{\"tenant\": ..., \"key\": ...}}, ...]}}")
    return [{"tenant": str(t.get("tenant") or f"tenant-{i}"), "key": t["key"]} for i, t in enumerate(tenants)]


def settings_from(opts) -> Settings:
    return Settings(
        api_key=_read_api_key(opts),
        tenant_keys=_read_tenant_keys(opts.tenant_keys),
        slo=load_slo(opts.slo_file) if opts.slo_file else None,
        model=opts.model,
        mixed_models=[m.strip() for m in opts.mixed_models.split(",") if m.strip()],
        think=_range(opts.think_time, "--think-time"),
        output_tokens=_int_range(opts.output_tokens, "--output-tokens"),
        doc_output_tokens=_int_range(opts.doc_output_tokens, "--doc-output-tokens"),
        doc_input_tokens=_int_range(opts.doc_input_tokens, "--doc-input-tokens"),
        rag_context_tokens=opts.rag_context_tokens,
        rag_documents=max(1, opts.rag_documents),
        chat_turns=_int_range(opts.chat_turns, "--chat-turns"),
        fixed_output=opts.fixed_output == "true",
        quota_backoff_max=opts.quota_backoff_max,
        seed=opts.seed,
        tokenizers=parse_tokenizers(getattr(opts, "tokenizer", "") or ""),
    )


@dataclass
class ModelCatalog:
    """What the target serves (from /v1/models) and each name's measured token budget."""

    models: dict[str, dict[str, Any]]
    aliases: dict[str, list[str]]
    budgets: dict[str, TokenBudget] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted(self.models) + sorted(a for a in self.aliases if a not in self.models)

    def default(self) -> str:
        return "default" if "default" in self.aliases else sorted(self.models)[0]

    def max_model_len(self, name: str) -> int | None:
        ids = [name] if name in self.models else self.aliases.get(name, [])
        lens = [self.models[i].get("max_model_len") for i in ids if i in self.models]
        lens = [n for n in lens if isinstance(n, int)]
        return min(lens) if lens else None


class RunState:
    """Per-process state: settings, catalog, raw log, and (on workers) records for the master."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.catalog: ModelCatalog | None = None
        self.lock = Semaphore()
        self.raw_path: Path | None = None
        self.summary_path: Path | None = None
        self._raw = None
        self.pending: list[dict[str, Any]] = []  # worker: records not yet sent to the master
        self.is_worker = False
        self.started_at: float | None = None
        self.user_ids = itertools.count()
        self.tenant_turn = itertools.count()
        self.warned: set[str] = set()

    @property
    def worker_name(self) -> str:
        """host-pid of the process that ran the request (not cached: --processes forks)."""
        return f"{socket.gethostname()}-{os.getpid()}"

    def warn_once(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message)

    def open_raw_log(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.raw_path = path
        self._raw = path.open("a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]] | list[RequestRecord]) -> None:
        if self._raw is None:
            return
        for r in records:
            line = r.to_json() if isinstance(r, RequestRecord) else json.dumps(r, ensure_ascii=False)
            self._raw.write(line + "\n")
        self._raw.flush()

    def record(self, rec: RequestRecord) -> None:
        rec.worker = self.worker_name
        if self.is_worker:
            self.pending.append(json.loads(rec.to_json()))
        else:
            self.write([rec])

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


STATE = RunState()
SHAPE: dict[str, Any] = {}


def _result_paths(opts) -> tuple[Path, Path]:
    prefix = getattr(opts, "csv_prefix", None)
    if not prefix:
        prefix = str(RESULTS_DIR / f"run-{datetime.now():%Y%m%d-%H%M%S}")
    raw = Path(opts.raw_log) if opts.raw_log else Path(f"{prefix}_requests.jsonl")
    summary = Path(opts.summary_file) if opts.summary_file else Path(f"{prefix}_summary.json")
    return raw, summary


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    STATE.is_worker = isinstance(environment.runner, WorkerRunner)
    opts = environment.parsed_options
    if opts is None or STATE.is_worker:
        return
    _select_user_classes_by_tags(environment)
    try:
        settings_from(opts)  # bad options, key files or SLO files fail before any load is sent
    except (OSError, ValueError) as exc:  # SLOError is a ValueError
        log.error(f"cannot start the load test: {exc}")
        raise SystemExit(1) from None
    raw, summary = _result_paths(opts)
    if raw.exists():
        raw.unlink()  # one run per raw log: the summary and report read it whole
    STATE.open_raw_log(raw)
    STATE.summary_path = summary


def _select_user_classes_by_tags(environment) -> None:
    """Drop user classes whose every task is filtered out by --tags/--exclude-tags.

    Locust filters tasks, not classes; a class left without tasks would fail when spawned.
    """
    opts = environment.parsed_options
    tags = set(getattr(opts, "tags", None) or [])
    excluded = set(getattr(opts, "exclude_tags", None) or [])
    if not tags and not excluded:
        return

    def selected(user_class) -> bool:
        for t in user_class.tasks:
            own = getattr(t, "locust_tag_set", set())
            if (not tags or own & tags) and not own & excluded:
                return True
        return False

    keep = [u for u in environment.user_classes if selected(u)]
    if not keep:
        log.error(f"no scenario matches --tags {sorted(tags)} / --exclude-tags {sorted(excluded)}; "
                  f"tags: chat, document, rag, municipal, mixed")
        raise SystemExit(1)
    environment.user_classes[:] = keep


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs) -> None:
    STATE.settings = settings_from(environment.parsed_options)
    STATE.started_at = time.time()
    if isinstance(environment.runner, MasterRunner):
        return
    if not STATE.settings.api_key and not STATE.settings.tenant_keys:
        STATE.warn_once("nokey", "no API key (--api-key, --api-key-file, LOADTEST_API_KEY): "
                                 "requests will be refused unless the target has auth disabled")


@events.report_to_master.add_listener
def _send_records(client_id, data, **_kwargs) -> None:
    data["govllm_records"], STATE.pending = STATE.pending, []


@events.worker_report.add_listener
def _receive_records(client_id, data, **_kwargs) -> None:
    STATE.write(data.get("govllm_records") or [])


@events.quitting.add_listener
def _on_quitting(environment, **_kwargs) -> None:
    if STATE.is_worker or STATE.raw_path is None:
        return
    STATE.close()
    records = read_records(STATE.raw_path)
    settings = STATE.settings or settings_from(environment.parsed_options)
    summary = {
        "run": {
            "host": environment.host,
            "started_at": STATE.started_at,
            "ended_at": time.time(),
            "user_classes": [u.__name__ for u in environment.user_classes],
            "shape": SHAPE["shape"].describe() if "shape" in SHAPE else None,
            "raw_log": str(STATE.raw_path),
            "slo_file": environment.parsed_options.slo_file or None,
        },
        **summarise(records),
    }
    code = None
    if settings.slo is not None:
        results = evaluate(records, settings.slo)
        passed = all(r.passed for r in results)
        summary["slo"] = {"per_request": settings.slo.per_request, "passed": passed,
                          "gates": [r.as_dict() for r in results]}
        for r in results:
            value = "no data" if r.value is None else f"{r.value:.4g}"
            (log.info if r.passed else log.error)(
                f"SLO {'PASS' if r.passed else 'FAIL'}: {r.gate.describe()} (measured {value})")
        if not passed:
            code = SLO_FAILED_EXIT
    if STATE.summary_path is not None:
        STATE.summary_path.parent.mkdir(parents=True, exist_ok=True)
        STATE.summary_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    _log_summary(summary)
    if code is not None:
        environment.process_exit_code = code


def _log_summary(summary: dict[str, Any]) -> None:
    def ms(d: dict, q: str) -> str:
        v = d.get(q)
        return "-" if v is None else f"{v:.0f}"

    lines = [f"{'scenario model':<44} {'ok':>5} {'err':>4} {'429':>4} {'ttft p50/p90/p99 ms':>22} "
             f"{'tpot p90':>8} {'e2e p90':>8} {'goodput':>7}"]
    for name, g in summary["scenario_models"].items():
        t = g["ttft_ms"]
        good = "-" if g["goodput"] is None else f"{100 * g['goodput']:.0f}%"
        lines.append(f"{name:<44} {g['ok']:>5} {g['error']:>4} {g['quota']:>4} "
                     f"{ms(t, 'p50'):>6}/{ms(t, 'p90'):>6}/{ms(t, 'p99'):>6}   "
                     f"{ms(g['tpot_ms'], 'p90'):>8} {ms(g['e2e_ms'], 'p90'):>8} {good:>7}")
    log.info("per-request metrics (exact, from the raw log):\n" + "\n".join(lines))


# ---------------------------------------------------------------- shapes


class GovLLMShape(LoadTestShape):
    """Forwards to the shape chosen with --shape; -u is the peak, -r the spawn rate, -t the length."""

    use_common_options = True

    def tick(self):
        shape = SHAPE.get("shape")
        if shape is None:
            shape = SHAPE["shape"] = build_shape(self.runner.environment.parsed_options)
            log.info(f"load shape: {shape.describe()}")
        return shape.tick(self.get_run_time())


def build_shape(opts):
    users = opts.num_users or 1
    rate = opts.spawn_rate or 1.0
    run_time = opts.run_time or None
    if opts.shape == "step":
        return Step(max_users=users, step_users=opts.step_users or max(1, users // 4),
                    step_s=opts.step_seconds, spawn_rate=rate, run_time_s=run_time)
    if opts.shape == "spike":
        length = run_time or 60
        return Spike(base_users=opts.spike_base_users or max(1, users // 5), peak_users=users,
                     spike_at_s=opts.spike_at if opts.spike_at >= 0 else length / 3,
                     spike_s=opts.spike_seconds if opts.spike_seconds > 0 else length / 6,
                     run_time_s=length, spawn_rate=rate, spike_rate=float(max(users, rate)))
    if opts.shape == "day":
        think = _range(opts.think_time, "--think-time")
        return DayProfile(max_users=users, day_s=opts.day_seconds, headcount=opts.day_headcount,
                          active_share=opts.day_active_share, minutes_per_user=opts.day_minutes_per_user,
                          request_interval_s=opts.day_request_interval,
                          cycle_s=sum(think) / 2 + 1.0)  # think time plus about a second of request
    return Steady(users=users, spawn_rate=rate, run_time_s=run_time)


# ---------------------------------------------------------------- users


@dataclass
class Answer:
    """What one request produced, for the scenario to continue with (conversation history)."""

    outcome: str
    text: str = ""
    retry_after_s: float = 0.0


class LLMUser(FastHttpUser):
    """Streaming chat requests measured from the bytes; subclasses are the scenarios.

    FastHttpUser (geventhttpclient): at 50 users it measured TTFT closer to the truth than
    HttpUser at less client CPU (docs/benchmarks.md, `python -m loadtest.bench_locust_client`),
    provided the stream is read line by line as it arrives (`_stream_lines`).
    """

    abstract = True
    scenario = "llm"
    connection_timeout = 10.0
    network_timeout = 900.0  # a long generation may be silent between events for minutes

    def on_start(self) -> None:
        self.settings: Settings = STATE.settings or settings_from(self.environment.parsed_options)
        self.index = next(STATE.user_ids)
        self.rng = random.Random(f"{self.settings.seed}-{self.scenario}-{self.index}")
        self.api_key = self.settings.api_key

    def wait_time(self) -> float:
        lo, hi = self.settings.think
        return self.rng.uniform(lo, hi)

    # -- target discovery and calibration (once per process, shared by its users)

    def catalog(self) -> ModelCatalog:
        if STATE.catalog is None:
            with STATE.lock:
                if STATE.catalog is None:
                    STATE.catalog = self._discover()
        return STATE.catalog

    def _discover(self) -> ModelCatalog:
        key = self.api_key or (self.settings.tenant_keys[0]["key"] if self.settings.tenant_keys else "")
        with self.client.get("/v1/models", headers=_auth(key), name="/v1/models",
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                raise RuntimeError(f"cannot list models at {self.host}: HTTP {resp.status_code}")
            cards = resp.json().get("data") or []
        cards = [c for c in cards if c.get("kind", "chat") == "chat"]  # the scenarios chat
        models = {c["id"]: c for c in cards}
        aliases: dict[str, list[str]] = {}
        for c in cards:
            for alias in c.get("aliases") or []:  # govllm's extra; absent elsewhere
                aliases.setdefault(alias, []).append(c["id"])
        if not models:
            raise RuntimeError(f"{self.host}/v1/models lists no models")
        catalog = ModelCatalog(models, aliases)
        log.info(f"target serves {sorted(models)}; aliases {sorted(aliases)}")
        return catalog

    def model(self) -> str:
        return self.settings.model or self.catalog().default()

    def budget(self, model: str) -> TokenBudget:
        """Tokens per character of `model`'s tokenizer, measured once with two tiny requests."""
        catalog = self.catalog()
        if model not in catalog.budgets:
            with STATE.lock:
                if model not in catalog.budgets:
                    catalog.budgets[model] = self._calibrate(model, catalog.max_model_len(model))
        return catalog.budgets[model]

    def _calibrate(self, model: str, max_model_len: int | None) -> TokenBudget:
        path = self.settings.tokenizers.get(model) or self.settings.tokenizers.get("*")
        if path:  # exact and request-free (loadtest/llmload/tokens.py)
            budget = budget_from_tokenizer(path, max_model_len)
            log.info(f"{model}: {budget.tokens_per_char:.2f} tokens per character from the tokenizer "
                     f"at {path}, template overhead {budget.overhead_tokens - 32} tokens")
            return budget
        text = prompts.calibration_text()
        counts = []
        for content in ("あ", text):
            body = {"model": model, "max_tokens": 1,
                    "messages": [{"role": "system", "content": prompts.prompt_set()["system_prompts"][0]},
                                 {"role": "user", "content": content}]}
            with self.client.post("/v1/chat/completions", json=body, headers=_auth(self.api_key),
                                  name=f"calibrate {model}", catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                    STATE.warn_once(f"cal-{model}", f"could not calibrate {model}; assuming 1 token/char")
                    return TokenBudget(max_model_len=max_model_len)
                counts.append(resp.json()["usage"]["prompt_tokens"])
        per_char = max(0.05, (counts[1] - counts[0]) / max(1, len(text) - 1))
        budget = TokenBudget(tokens_per_char=per_char, overhead_tokens=counts[0] + 32,
                             max_model_len=max_model_len)
        log.info(f"{model}: {per_char:.2f} tokens per character, template overhead {counts[0]} "
                 f"tokens, context {max_model_len}")
        return budget

    def pick(self, bounds: tuple[int, int]) -> int:
        return self.rng.randint(bounds[0], bounds[1])

    # -- one measured request

    def chat(self, *, scenario: str, model: str, messages: list[dict[str, str]], max_tokens: int,
             key: str | None = None, tenant: str | None = None) -> Answer:
        """Stream one chat completion; fire its events and write its raw record."""
        body: dict[str, Any] = {
            "model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.settings.fixed_output:
            body.update(min_tokens=max_tokens, ignore_eos=True)
        request_id = f"lt-{uuid.uuid4().hex[:20]}"
        headers = {**_auth(self.api_key if key is None else key), "x-request-id": request_id}
        rec = RequestRecord(t=time.time(), scenario=scenario, requested_model=model, outcome="error",
                            tenant=tenant)
        start = time.perf_counter()
        with self.client.post("/v1/chat/completions", json=body, headers=headers, stream=True,
                              catch_response=True, name=f"{scenario} {model}") as resp:
            rec.status = resp.status_code
            if resp.status_code == 429:
                return self._quota(resp, rec, scenario, model)
            if resp.status_code != 200:
                rec.error = _error_code(resp)
                resp.failure(f"HTTP {resp.status_code} {rec.error}")
                return self._finish(rec, Answer("error"))
            meter = StreamMeter(start)
            try:
                for data in _stream_lines(resp):
                    meter.feed(data, time.perf_counter())
            except Exception as exc:  # the connection broke mid-stream
                meter.result.error = f"stream broken: {type(exc).__name__}: {exc}"
            m = meter.result
            resp.request_meta["response_length"] = m.bytes_read
            rec.model = resp.headers.get("x-govllm-model") or m.model
            rec.prompt_tokens, rec.output_tokens = m.prompt_tokens, m.output_tokens
            problem = (m.error or (None if m.done else "stream ended without [DONE]")
                       or (None if m.output_tokens is not None else "no usage in the stream")
                       or (None if m.ttft_s is not None else "no content in the stream"))
            if problem:
                rec.error = problem
                resp.failure(problem)
                return self._finish(rec, Answer("error"))
            resp.success()
        rec.outcome = "ok"
        rec.ttft_ms = 1000 * m.ttft_s
        rec.e2e_ms = 1000 * m.e2e_s
        rec.itl_ms = [round(1000 * x, 3) for x in m.itl_s]
        rec.tpot_ms = tpot_ms(rec.e2e_ms, rec.ttft_ms, rec.output_tokens)
        rec.tokens_per_s = tokens_per_s(rec.output_tokens, rec.e2e_ms)
        self._fire_metrics(rec)
        return self._finish(rec, Answer("ok", text=m.text))

    def _quota(self, resp, rec: RequestRecord, scenario: str, model: str) -> Answer:
        """A 429 is the tenant's limit doing its job: its own row, not a failure."""
        rec.outcome = "quota"
        rec.error = _error_code(resp)
        resp.request_meta["request_type"] = QUOTA
        resp.request_meta["name"] = f"{scenario} {model} {rec.error}"
        resp.success()
        try:
            retry = float(resp.headers.get("retry-after", "1"))
        except ValueError:
            retry = 1.0
        return self._finish(rec, Answer("quota", retry_after_s=min(retry, self.settings.quota_backoff_max)))

    def _finish(self, rec: RequestRecord, answer: Answer) -> Answer:
        slo = self.settings.slo
        if slo is not None and slo.per_request and rec.outcome != "quota":
            rec.good = rec.outcome == "ok" and slo.meets(rec.ttft_ms, rec.tpot_ms, rec.e2e_ms)
            self._fire("GOODPUT", rec, 100.0 if rec.good else 0.0)
        STATE.record(rec)
        return answer

    def _fire_metrics(self, rec: RequestRecord) -> None:
        self._fire("TTFT", rec, rec.ttft_ms)
        if rec.tpot_ms is not None:
            self._fire("TPOT", rec, rec.tpot_ms)
        self._fire("E2E", rec, rec.e2e_ms, length=rec.output_tokens or 0)
        self._fire("TOKENS", rec, float(rec.output_tokens or 0), length=rec.output_tokens or 0)
        if rec.tokens_per_s is not None:
            self._fire("TOK/S", rec, rec.tokens_per_s)

    def _fire(self, kind: str, rec: RequestRecord, value: float, *, length: int = 0) -> None:
        """A custom row: `kind` is the request type, the value sits in the response-time column."""
        served = rec.label_model
        model = served if served == rec.requested_model else f"{rec.requested_model}>{served}"
        self.environment.events.request.fire(
            request_type=kind, name=f"{rec.scenario} {model}", response_time=value,
            response_length=length, exception=None, context={},
        )


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _stream_lines(resp):
    """The body line by line, each as soon as its LF arrives.

    locust's FastResponse.iter_content(n) waits until n bytes are buffered, which delays the
    first token by up to n bytes of events; geventhttpclient's own response (`_response`, not
    part of locust's API) has readline, which returns as soon as a line is complete.
    """
    raw = resp._response
    return iter(lambda: raw.readline(b"\n"), b"")


def _error_code(resp) -> str:
    try:
        err = resp.json()["error"]
        return str(err.get("code") or err.get("type") or err.get("message"))[:120]
    except Exception:
        return (resp.text or str(getattr(resp, "error", "")) or "no response")[:120]


class StaffChatUser(LLMUser):
    """Staff asking everyday questions, following up in the same conversation (streaming)."""

    weight = 50
    scenario = "staff_chat"

    @tag("chat")
    @task
    def conversation(self) -> None:
        model = self.model()
        budget = self.budget(model)
        system, question = prompts.chat_opening(self.rng)
        history: list[dict[str, str]] = [{"role": "system", "content": system}]
        turns = self.pick(self.settings.chat_turns)
        for turn in range(turns):
            max_tokens = self.pick(self.settings.output_tokens)
            history.append({"role": "user", "content": question if turn == 0 else prompts.chat_followup(self.rng)})
            _fit_history(history, budget, max_tokens)
            answer = self.chat(scenario=self.scenario, model=model, messages=history, max_tokens=max_tokens)
            if answer.outcome != "ok":
                return
            history.append({"role": "assistant", "content": answer.text})
            if turn + 1 < turns:
                self.wait()


def _fit_history(history: list[dict[str, str]], budget: TokenBudget, max_tokens: int) -> None:
    """Drop the oldest exchanges (keeping the system prompt) while the input would not fit."""
    limit = budget.input_token_limit(max_tokens)
    if limit is None:
        return
    while len(history) > 2:
        chars = sum(len(m["content"]) for m in history)
        if chars * budget.tokens_per_char + budget.overhead_tokens <= limit:
            return
        del history[1:3]
    if len(history) == 2:  # a single message that is still too long: shorten it
        room, _ = budget.chars_for(limit, 0)
        history[1]["content"] = history[1]["content"][:max(8, room - len(history[0]["content"]))]


class DocumentTaskUser(LLMUser):
    """Summarising and drafting over long administrative documents (2k-8k tokens)."""

    weight = 10
    scenario = "document"

    @tag("document")
    @task
    def document_task(self) -> None:
        model = self.model()
        budget = self.budget(model)
        max_tokens = self.pick(self.settings.doc_output_tokens)
        target = self.pick(self.settings.doc_input_tokens)
        chars, clamped = budget.chars_for(target, max_tokens)
        if clamped:
            STATE.warn_once(f"doc-{model}", f"document inputs for {model} are clamped to its context "
                                            f"({budget.max_model_len} tokens): about {chars} characters")
        _, text = prompts.document_task(self.rng, chars)
        self.chat(scenario=self.scenario, model=model, max_tokens=max_tokens,
                  messages=[{"role": "system", "content": prompts.prompt_set()["system_prompts"][2]},
                            {"role": "user", "content": text}])


class RagUser(LLMUser):
    """A question over a retrieved document (the same few for every user): shared prefixes repeat."""

    weight = 20
    scenario = "rag"

    @tag("rag")
    @task
    def ask(self) -> None:
        model = self.model()
        budget = self.budget(model)
        max_tokens = self.pick(self.settings.output_tokens)
        # sized for the largest output so every request of the run shares the same context
        chars, _ = budget.chars_for(self.settings.rag_context_tokens, self.settings.output_tokens[1] + 64)
        context = prompts.rag_context(chars, document=self.rng.randrange(self.settings.rag_documents))
        self.chat(scenario=self.scenario, model=model, max_tokens=max_tokens,
                  messages=[{"role": "system", "content": context},
                            {"role": "user", "content": prompts.rag_question(self.rng)}])


class MunicipalApiUser(LLMUser):
    """A municipality's system calling the API with its own key and a small token budget."""

    weight = 10
    scenario = "municipal"

    def on_start(self) -> None:
        super().on_start()
        keys = self.settings.tenant_keys
        if keys:
            chosen = keys[next(STATE.tenant_turn) % len(keys)]
            self.tenant, self.key = chosen["tenant"], chosen["key"]
        else:
            STATE.warn_once("notenants", "no --tenant-keys / LOADTEST_TENANT_KEYS: municipal users use "
                                         "the main API key (no municipal quotas are exercised)")
            self.tenant, self.key = "main-key", self.api_key

    @tag("municipal")
    @task
    def query(self) -> None:
        answer = self.chat(scenario=f"municipal/{self.tenant}", model=self.model(),
                           max_tokens=self.pick(self.settings.output_tokens), key=self.key,
                           tenant=self.tenant,
                           messages=[{"role": "user", "content": prompts.municipal_query(self.rng)}])
        if answer.outcome == "quota":
            gevent.sleep(answer.retry_after_s)  # on top of the think time, as a client would


class MixedModelUser(LLMUser):
    """Traffic spread over every model and alias the target serves, per-model statistics."""

    weight = 10
    scenario = "mixed"

    def on_start(self) -> None:
        super().on_start()
        self.turn = self.rng.randrange(1000)  # each user starts elsewhere in the rotation

    @tag("mixed")
    @task
    def any_model(self) -> None:
        names = self.settings.mixed_models or self.catalog().names
        model = names[self.turn % len(names)]  # round robin: every name gets its share
        self.turn += 1
        self.chat(scenario=self.scenario, model=model, max_tokens=self.pick(self.settings.output_tokens),
                  messages=[{"role": "user", "content": prompts.chat_opening(self.rng)[1]}])
