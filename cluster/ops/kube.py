"""Reading a live cluster for `govllm preflight` and `govllm status --context`.

Only this module talks to the API server (through the official `kubernetes` client); it
returns plain API JSON (dicts), and the checks in cluster/ops/preflight.py and
cluster/ops/rayservice_status.py are pure functions over those dicts, so they are tested on
canned API objects and, end to end, against a small fake API server on 127.0.0.1
(tests/component/test_kube_ops_fake_apiserver.py): no real API server can run on the machines
this project is built on.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.render.target import SERVE_PORT


class ClusterUnreachable(RuntimeError):
    """No kubeconfig, an unknown context, or an API server that does not answer."""


class Kube:
    """Thin reader over the kubernetes client; every method returns API JSON or None (404)."""

    def __init__(self, context: str | None = None, *, config_file: str | None = None):
        from kubernetes import client, config

        try:
            api_client = config.new_client_from_config(config_file=config_file, context=context)
        except (config.ConfigException, OSError, ValueError) as exc:
            raise ClusterUnreachable(f"cannot load kubeconfig (context {context or 'current'}): "
                                     f"{exc}") from None
        self._api = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.ext = client.ApiextensionsV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)

    def _plain(self, call, *args, **kwargs) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            result = call(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterUnreachable(f"API server answered {exc.status}: {exc.reason}") from None
        except HTTPError as exc:
            raise ClusterUnreachable(f"API server unreachable: {exc}") from None
        return result if isinstance(result, dict) else self._api.sanitize_for_serialization(result)

    def crd(self, name: str) -> dict | None:
        return self._plain(self.ext.read_custom_resource_definition, name)

    def namespace(self, name: str) -> dict | None:
        return self._plain(self.core.read_namespace, name)

    def nodes(self) -> list[dict]:
        return self._plain(self.core.list_node)["items"]

    def quotas(self, namespace: str) -> list[dict]:
        return self._plain(self.core.list_namespaced_resource_quota, namespace)["items"]

    def storage_class(self, name: str) -> dict | None:
        return self._plain(self.storage.read_storage_class, name)

    def pvc(self, namespace: str, name: str) -> dict | None:
        return self._plain(self.core.read_namespaced_persistent_volume_claim, name, namespace)

    def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The keys of a Secret (never its values), or None when it does not exist."""
        secret = self._plain(self.core.read_namespaced_secret, name, namespace)
        return None if secret is None else set((secret.get("data") or {}).keys())

    def rayservice(self, namespace: str, name: str) -> dict | None:
        return self._plain(self.custom.get_namespaced_custom_object, "ray.io", "v1", namespace,
                           "rayservices", name)

    def pods(self, namespace: str, selector: str) -> list[dict]:
        return self._plain(self.core.list_namespaced_pod, namespace,
                           label_selector=selector)["items"]

    def router_readyz(self, namespace: str, rayservice: str) -> tuple[dict | None, str]:
        """The router's /readyz through the API server's service proxy (per-model replicas)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            text = self.core.connect_get_namespaced_service_proxy_with_path(
                f"{rayservice}-serve-svc:{SERVE_PORT}", namespace, "readyz")
        except ApiException as exc:  # 503 while a model has no replica: the body still says why
            try:
                return json.loads(exc.body), ""
            except (TypeError, ValueError):
                return None, f"service proxy answered {exc.status} {exc.reason}"
        except HTTPError as exc:
            return None, f"service proxy unreachable: {exc}"
        try:
            return json.loads(text if isinstance(text, str) else json.dumps(text)), ""
        except ValueError:
            return None, "service proxy returned no JSON"
