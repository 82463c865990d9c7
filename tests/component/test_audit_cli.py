"""`govllm audit verify` and `govllm audit export` against a real archive and a real Redis.

The spec is the embedded local one, pointed at a temporary state directory and a Redis
started for the test, so the commands find the archive, the key file and the chain heads
exactly as they do next to `govllm serve`.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.render.serve_config import audit_settings, store_settings
from cluster.spec.schema import DEFAULT_SPEC_PATH, load_spec
from govllm.cli.main import app
from serving.audit.trail import AuditTrail, redis_heads
from serving.store import StoreKeyspace, sync_client
from tests.component.test_audit_trail import SECRET, answered, make_ctx
from tests.servers import start_redis

runner = CliRunner()


@pytest.fixture
def deployment(tmp_path):
    """A spec whose audit trail holds: two answered requests, one refusal, one unclosed."""
    redis = start_redis(tmp_path / "redis")
    data = yaml.safe_load(DEFAULT_SPEC_PATH.read_text(encoding="utf-8"))
    data["state_dir"] = str(tmp_path / "state")
    data["store"] = {"embedded": True, "port": redis.port}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    spec, _ = load_spec(spec_path)
    store = store_settings(spec)
    trail = AuditTrail(audit_settings(spec), app=spec.name, chain_hint="cli",
                       heads=redis_heads(sync_client(store), StoreKeyspace(store.namespace).audit_heads))

    async def traffic():
        for rid, tenant in (("ok-1", "city-a"), ("ok-2", "city-b")):
            ctx = make_ctx(rid, tenant=tenant)
            await trail.begin(ctx)
            await trail.end(answered(ctx))
        refused = make_ctx("refused-1", tenant="city-a")
        refused.status, refused.error_code = 403, "confidentiality_not_allowed"
        await trail.end(refused)
        await trail.begin(make_ctx("cut-off-1", tenant="city-a"))  # the replica dies here

    asyncio.run(traffic())
    trail.close()
    yield spec_path, Path(audit_settings(spec).sink.path)
    redis.stop()


def cli(*args: str):
    return runner.invoke(app, ["audit", *args])


def test_verify_reports_unclosed_requests_with_exit_3_and_broken_with_exit_2(deployment):
    spec, archive = deployment
    result = cli("verify", "--spec", str(spec), "--json")
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["intact"], report["status"]) == (False, True, "unclosed")
    assert [(u["request_id"], u["tenant"]) for u in report["unclosed"]] == [("cut-off-1", "city-a")]
    assert set(report["unclosed"][0]) == {"request_id", "chain", "time", "tenant"}
    text = cli("verify", "--spec", str(spec))
    assert text.exit_code == 3 and "1 UNCLOSED" in text.stdout and "request cut-off-1" in text.stdout
    assert SECRET not in text.stdout
    next(archive.rglob("*.gvaudit")).unlink()
    broken = cli("verify", "--spec", str(spec), "--json")
    assert broken.exit_code == 2 and json.loads(broken.stdout)["status"] == "broken"


def test_export_merges_begin_and_end_and_writes_owner_only(deployment, tmp_path):
    spec, _ = deployment
    out = tmp_path / "records.jsonl"
    result = cli("export", "--spec", str(spec), "--tenant", "city-a", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = {r["request_id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert set(rows) == {"ok-1", "refused-1", "cut-off-1"}  # city-b's request is not exported
    assert all(r["type"] == "request" for r in rows.values())
    assert rows["ok-1"]["closed"] is True and rows["ok-1"]["output"][0]["text"] == "回答です"
    assert rows["ok-1"]["prompt"][0]["content"] == SECRET and rows["ok-1"]["status"] == 200
    assert rows["refused-1"]["closed"] is True and rows["refused-1"]["status"] == 403
    assert rows["cut-off-1"]["closed"] is False and rows["cut-off-1"]["status"] is None
    assert "1 unclosed" in result.stderr
    # an existing file readable by others is made owner-only before a byte is written
    out.write_text("old", encoding="utf-8")
    os.chmod(out, 0o644)
    assert cli("export", "--spec", str(spec), "-o", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(out.read_text().splitlines()) == 4


def test_export_to_stdout_is_json_lines(deployment):
    spec, _ = deployment
    result = cli("export", "--spec", str(spec), "--tenant", "city-b")
    assert result.exit_code == 0
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["request_id"] == "ok-2" and row["closed"] is True
