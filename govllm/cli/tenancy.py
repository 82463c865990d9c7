"""`govllm keys | usage | audit | feedback`: the tenancy and audit commands.

They talk to the same shared store and audit archive as the running
application, located through the cluster spec. Who may run them is decided
by who can reach the store and, for audit, who holds the audit key (the KMS
key policy, or the local key file's permissions).
"""

from __future__ import annotations

import json
from datetime import datetime, time
from pathlib import Path

import typer

from cluster.spec.schema import ClusterSpec
from govllm.cli.common import SpecOption, load, write_output
from serving.store import StoreKeyspace, sync_client

keys_app = typer.Typer(help="Create, list, rotate and revoke tenants' API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="Check and read the encrypted audit trail.", no_args_is_help=True)
feedback_app = typer.Typer(help="Users' ratings of answers, per model.", no_args_is_help=True)

def _load(spec: Path | None) -> ClusterSpec:
    return load(spec)[0]


def _store(spec: ClusterSpec):
    from cluster.render.serve_config import store_settings

    settings = store_settings(spec)
    client = sync_client(settings)
    try:
        client.ping()
    except Exception as exc:
        typer.echo(f"the shared store at {settings.url} is unreachable ({exc}); is `govllm serve` "
                   "running (embedded store) or the store URL right?", err=True)
        raise typer.Exit(1) from None
    return client, StoreKeyspace(settings.namespace)


def _admin(spec: ClusterSpec):
    from serving.tenancy.keystore import KeyAdmin

    client, keys = _store(spec)
    return KeyAdmin(client, keys)


def _emit(data, as_json: bool, lines: list[str]) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False) if as_json else "\n".join(lines))


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant id declared in the spec."),
    user: str = typer.Option(..., "--user", "-u", help="Who or what uses the key (person, application)."),
    description: str = typer.Option("", "--description", "-d"),
    priority: str | None = typer.Option(
        None, "--priority", "-p",
        help="Admission priority class of the key's requests, at or below the tenant's "
        "(router.priority_classes; e.g. batch for a batch job's key)."),
    spec: Path | None = SpecOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Issue a key. The key is printed once; only its salted hash is stored."""
    cluster_spec = _load(spec)
    tenants = {t.id: t for t in cluster_spec.tenants}
    if tenant not in tenants:
        typer.echo(f"tenant {tenant!r} is not declared in the spec; declared: "
                   f"{', '.join(tenants) or 'none'}", err=True)
        raise typer.Exit(1)
    if priority is not None:
        names = [c.name for c in cluster_spec.router.priority_classes]
        own = cluster_spec.router.priority_class_of(tenants[tenant])
        if priority not in names or names.index(priority) < names.index(own):
            typer.echo(f"--priority {priority!r}: tenant {tenant} is in class {own}; a key may have "
                       f"that class or a lower one: {', '.join(names[names.index(own):])}", err=True)
            raise typer.Exit(1)
    plaintext, record = _admin(cluster_spec).create(tenant, user, description, priority)
    _emit({"key": plaintext, **record.public()}, as_json,
          [f"key id {record.key_id} for tenant {tenant}, user {user}:", plaintext,
           "store it now: it cannot be shown again"])


@keys_app.command("list")
def keys_list(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys."),
    spec: Path | None = SpecOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Keys (never their secrets)."""
    records = _admin(_load(spec)).list(tenant, include_revoked)
    rows = [r.public() for r in records]
    lines = [f"{r['key_id']}  {r['tenant']:<20} {r['user']:<20} "
             f"{'REVOKED' if r['revoked_at'] else 'active':<8} "
             f"{'priority ' + r['priority'] + '  ' if r.get('priority') else ''}{r['description']}" for r in rows]
    _emit(rows, as_json, lines or ["no keys"])


@keys_app.command("revoke")
def keys_revoke(key_id: str, spec: Path | None = SpecOption) -> None:
    """Revoke a key; every router replica refuses it at once."""
    try:
        record = _admin(_load(spec)).revoke(key_id)
    except KeyError as exc:
        typer.echo(str(exc.args[0]), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {record.key_id} (tenant {record.tenant}, user {record.user})")


@keys_app.command("rotate")
def keys_rotate(key_id: str, spec: Path | None = SpecOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Issue a replacement for a key and revoke the old one."""
    try:
        plaintext, record = _admin(_load(spec)).rotate(key_id)
    except KeyError as exc:
        typer.echo(str(exc.args[0]), err=True)
        raise typer.Exit(1) from None
    _emit({"key": plaintext, "replaces": key_id, **record.public()}, as_json,
          [f"new key id {record.key_id} replaces {key_id} (revoked):", plaintext])


def usage_command(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    month: str = typer.Option(None, "--month", "-m", help="YYYY-MM (Asia/Tokyo); default: this month."),
    report: bool = typer.Option(False, "--report", help="Periodic AI-system report view."),
    spec: Path | None = SpecOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Tokens in/out per model for a tenant and month, from the shared ledger."""
    import time as _time

    from serving.tenancy.quota import month_of
    from serving.tenancy.reports import periodic_report, usage

    cluster_spec = _load(spec)
    month = month or month_of(_time.time())
    try:
        datetime.strptime(month, "%Y-%m")
    except ValueError:
        typer.echo(f"--month must be YYYY-MM, got {month!r}", err=True)
        raise typer.Exit(1) from None
    client, keys = _store(cluster_spec)
    prices = {m.id: m.price for m in cluster_spec.models if m.price is not None}
    data = usage(client, keys, tenant, month, prices)
    if report:
        declared = {t.id: t for t in cluster_spec.tenants}.get(tenant)
        data = periodic_report(data, declared)
        _emit(data, as_json, [f"{k}: {v}" for k, v in data.items()])
        return
    lines = [f"tenant {tenant}, {month}: {data['requests']} requests, {data['total_tokens']} tokens, "
             f"cost {_yen(data['cost_yen'])}"]
    lines += [f"  {m:<24} requests {v['requests']:>7}  in {v['prompt_tokens']:>10}  out {v['completion_tokens']:>10}"
              f"  {_yen(v.get('cost_yen'))}"
              for m, v in data["models"].items()]
    for level, v in data["confidentiality"].items():
        lines.append(f"  confidentiality {level}: {v.get('requests', 0)} requests, {v.get('tokens', 0)} tokens")
    _emit(data, as_json, lines)


def _yen(value: float | None) -> str:
    return "no price declared" if value is None else f"¥{value:,.2f}"


def _range(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    from serving.audit.objectstore import TOKYO

    def parse(value: str, *, upper: bool) -> datetime:
        dt = datetime.fromisoformat(value)
        if len(value) == 10:  # a date: the whole day
            dt = datetime.combine(dt.date(), time.max if upper else time.min)
        return dt if dt.tzinfo else dt.replace(tzinfo=TOKYO)

    today = datetime.now(TOKYO).date()
    lo = parse(start, upper=False) if start else datetime.combine(today, time.min, TOKYO)
    hi = parse(end, upper=True) if end else datetime.combine(today, time.max, TOKYO)
    if hi < lo:
        raise typer.BadParameter("--to is before --from")
    return lo, hi


def _audit_inputs(cluster_spec: ClusterSpec):
    from cluster.render.serve_config import audit_settings, store_settings
    from serving.audit.crypto import data_keys
    from serving.audit.objectstore import object_store

    settings = audit_settings(cluster_spec)
    if settings is None:
        typer.echo("audit is disabled in this spec", err=True)
        raise typer.Exit(1)
    try:
        keys = data_keys(settings.keys, create=False)
    except FileNotFoundError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    heads = None
    store = store_settings(cluster_spec)
    try:
        client = sync_client(store)
        raw = client.hgetall(StoreKeyspace(store.namespace).audit_heads)
        heads = {k.decode(): json.loads(v) for k, v in raw.items()}
    except Exception as exc:
        typer.echo(f"warning: chain heads unavailable ({exc}); deleted chain tails cannot be detected",
                   err=True)
    return object_store(settings.sink, settings.keys), keys, heads


FromOption = typer.Option(None, "--from", help="Start (ISO date or time; Asia/Tokyo unless given). Default: today.")
ToOption = typer.Option(None, "--to", help="End (ISO date or time). Default: end of today.")
AuditWorkersOption = typer.Option(8, "--workers", "-j", min=1, max=64, envvar="GOVLLM_AUDIT_WORKERS",
                                  help="Segments fetched and decrypted in parallel.")


def _segments_progress(description: str):
    from govllm.progress import progress

    return progress(description, "segments")


@audit_app.command("verify")
def audit_verify(
    start: str | None = FromOption,
    end: str | None = ToOption,
    spec: Path | None = SpecOption,
    as_json: bool = typer.Option(False, "--json"),
    workers: int = AuditWorkersOption,
) -> None:
    """Download, decrypt and check the hash chains, manifests and chain heads.

    Exit 0: intact, and every request has its end record.

    Exit 2: broken: missing segments or records, tampering, a missing manifest.

    Exit 3: intact, but some requests have a begin record and no end record (listed as unclosed: the router died mid-request, or the request is still running or its end not yet uploaded).
    """
    from serving.audit.verify import walk

    lo, hi = _range(start, end)
    store, keys, heads = _audit_inputs(_load(spec))
    with _segments_progress("audit verify") as bar:
        report, _ = walk(store, keys, lo, hi, heads=heads, workers=workers, keep_records=False,
                         progress=bar)
    verdict = {"ok": "OK", "broken": "PROBLEMS FOUND",
               "unclosed": f"INTACT, {len(report.unclosed)} UNCLOSED REQUEST(S)"}[report.status]
    lines = [f"{report.objects} objects, {report.records} records, {len(report.chains)} chains "
             f"between {lo.isoformat()} and {hi.isoformat()}: {verdict}"]
    lines += [f"  {p.kind}: chain {p.chain}: {p.detail}" + (f" ({p.key})" if p.key else "")
              for p in report.problems]
    lines += [f"  unclosed: request {u['request_id']} (tenant {u['tenant']}, chain {u['chain']}, "
              f"began {_when(u['time'])})" for u in report.unclosed]
    _emit(report.as_dict(), as_json, lines)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _when(timestamp: float | None) -> str:
    from serving.audit.objectstore import TOKYO

    return datetime.fromtimestamp(timestamp, TOKYO).isoformat() if timestamp else "?"


def _write_private(text: str, output: Path) -> None:
    """Write decrypted records readable by the owner only, from the first byte on.

    A new file is created 0600; an existing one is made 0600 before anything is written.
    """
    import os

    fd = os.open(output, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


@audit_app.command("export")
def audit_export(
    start: str | None = FromOption,
    end: str | None = ToOption,
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="JSON Lines file (created mode 0600); default stdout."),
    spec: Path | None = SpecOption,
    workers: int = AuditWorkersOption,
) -> None:
    """Decrypt records for an authorised auditor (JSON Lines), after verifying them.

    One line per request: its begin and end records merged, with "closed": false where the end record is missing. Requests are selected by the time they began.
    """
    from serving.audit.merge import merge_requests
    from serving.audit.verify import walk

    lo, hi = _range(start, end)
    store, keys, heads = _audit_inputs(_load(spec))
    with _segments_progress("audit export") as bar:
        report, records = walk(store, keys, lo, hi, heads=heads, workers=workers, progress=bar)
    chosen = [r for r in merge_requests(records) if tenant is None or r.get("tenant") == tenant]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen)
    if output:
        _write_private(text, output)
    else:
        write_output(text, None)
    state = {"ok": "OK", "unclosed": f"intact, {len(report.unclosed)} unclosed request(s)",
             "broken": f"found {len(report.problems)} problem(s): run audit verify"}[report.status]
    typer.echo(f"{len(chosen)} records exported; verification {state}", err=True)


@feedback_app.command("summary")
def feedback_summary_command(spec: Path | None = SpecOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Thumbs up/down per model, to compare the models by user satisfaction."""
    from serving.tenancy.reports import feedback_summary

    cluster_spec = _load(spec)
    client, keys = _store(cluster_spec)
    rows = feedback_summary(client, keys, [m.id for m in cluster_spec.models])
    lines = [f"{r['model']:<28} up {r['up']:>6}  down {r['down']:>6}  satisfaction "
             f"{'-' if r['satisfaction'] is None else format(r['satisfaction'], '.1%')}" for r in rows]
    _emit(rows, as_json, lines)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.add_typer(feedback_app, name="feedback")
    app.command("usage")(usage_command)

