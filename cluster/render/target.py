"""Where a rendered application runs: this machine, or a pod of the Helm chart.

The spec says what to run; the target says what differs by place: the addresses the
router listens on, the state directory, where the weights are, where the audit spool is,
and whether the store URL comes from the spec or from a Secret-backed variable. The
renderers (serve_config.py, helm_values.py) take a target instead of patching each
other's output, so `govllm serve`, `govllm render serve-config` and the chart's
serveConfigV2 differ only in these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.spec.schema import ClusterSpec

#: Paths and names fixed by the chart (helm/govllm/templates/_helpers.tpl uses the same).
POD_STATE_DIR = "/var/lib/govllm"
MODELS_DIR = f"{POD_STATE_DIR}/models"
AUDIT_SPOOL_DIR = f"{POD_STATE_DIR}/audit-spool"
SERVE_PORT = 8000
STORE_URL_ENV = "GOVLLM_STORE_URL"


@dataclass(frozen=True)
class RenderTarget:
    """What differs between running on this machine and in a pod (None: the spec's value)."""

    name: str
    router_host: str | None = None
    router_port: int | None = None
    data_plane_host: str | None = None
    state_dir: str | None = None
    audit_spool_dir: str | None = None
    #: Weights staged under this directory (<dir>/<model id>) instead of the spec's source.
    staged_models_dir: str | None = None
    #: The replicas read the store URL (with its password) from this variable.
    store_url_env: str | None = None

    def spec_view(self, spec: ClusterSpec) -> ClusterSpec:
        """The spec as it runs at this target: its addresses and directories applied."""
        router_update = {k: v for k, v in {"host": self.router_host, "port": self.router_port,
                                           "data_plane_host": self.data_plane_host}.items()
                         if v is not None}
        update: dict = {}
        if router_update:
            update["router"] = spec.router.model_copy(update=router_update)
        if self.audit_spool_dir is not None:
            update["audit"] = spec.audit.model_copy(update={"spool_dir": self.audit_spool_dir})
        if self.state_dir is not None:
            update["state_dir"] = self.state_dir
        return spec.model_copy(update=update) if update else spec

    def staged_path(self, model_id: str) -> str | None:
        """Where this target finds the model's weights, when it stages them itself."""
        if self.staged_models_dir is None:
            return None
        return f"{self.staged_models_dir}/{model_id}"


#: `govllm serve` and `govllm render serve-config`: everything as the spec says.
LOCAL = RenderTarget(name="local")
#: The Helm chart's pods: listen on all interfaces, fixed pod paths, store URL from a Secret.
POD = RenderTarget(name="pod", router_host="0.0.0.0", router_port=SERVE_PORT,
                   data_plane_host="0.0.0.0", state_dir=POD_STATE_DIR,
                   audit_spool_dir=AUDIT_SPOOL_DIR, staged_models_dir=MODELS_DIR,
                   store_url_env=STORE_URL_ENV)
