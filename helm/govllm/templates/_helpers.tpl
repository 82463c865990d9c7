{{/* Names and labels. Paths below are fixed: cluster/render/helm_values.py writes the same ones
     into serveConfigV2 (POD_STATE_DIR, MODELS_DIR). */}}
{{- define "govllm.stateDir" -}}/var/lib/govllm{{- end }}
{{- define "govllm.modelsDir" -}}/var/lib/govllm/models{{- end }}
{{- define "govllm.servePort" -}}8000{{- end }}
{{- define "govllm.metricsPort" -}}8080{{- end }}

{{- define "govllm.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end }}

{{- define "govllm.require" -}}
{{- if not .Values.plan -}}
{{- fail "plan is missing: render it with `govllm render helm-values --spec FILE -o plan.yaml` and pass -f plan.yaml (GPU counts and degrees are never typed by hand)" -}}
{{- end -}}
{{- end }}

{{- define "govllm.selectorLabels" -}}
app.kubernetes.io/name: govllm
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Ray pods of this release (KubeRay labels every Ray pod ray.io/is-ray-node=yes): the
     only peers allowed to reach Ray's dynamic ports, the model replicas' data planes among them. */}}
{{- define "govllm.rayPodLabels" -}}
{{ include "govllm.selectorLabels" . }}
ray.io/is-ray-node: "yes"
{{- end }}

{{- define "govllm.labels" -}}
{{ include "govllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
govllm.io/spec: {{ .Values.rayService.name | quote }}
govllm.io/cloud: {{ .Values.cloud | quote }}
{{- end }}

{{- define "govllm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "govllm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{- define "govllm.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository -}}{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/* Restricted Pod Security Standard. */}}
{{- define "govllm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "govllm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
runAsNonRoot: true
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The data-plane credential's Secret: required, and the message says how to create it
     (`fail`, not `required`, so that `helm lint` fails too). */}}
{{- define "govllm.dataPlaneSecret" -}}
{{- if not .Values.dataPlane.existingSecret -}}
{{- fail (printf "dataPlane.existingSecret is required: model replicas refuse every request without the data-plane credential, which only routers hold. Create the Secret once: `kubectl -n %s create secret generic govllm-data-plane --from-literal=%s=$(openssl rand -hex 32)`, then set dataPlane.existingSecret=govllm-data-plane (docs/operations.md, Install)" .Release.Namespace .Values.dataPlane.tokenKey) -}}
{{- end -}}
{{- .Values.dataPlane.existingSecret -}}
{{- end }}

{{/* Environment of every Ray container (head and every worker group), not of the staging
     init containers: Ray Serve's flags and the HAProxy wrapper (generated rayService.env),
     the data-plane credential, then what every container gets. */}}
{{- define "govllm.rayEnv" -}}
{{- range $k, $v := .Values.rayService.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
- name: {{ .Values.plan.dataPlane.tokenEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ include "govllm.dataPlaneSecret" . }}
      key: {{ .Values.dataPlane.tokenKey }}
{{- include "govllm.vendorCredentials" . }}
{{ include "govllm.env" . }}
{{- end }}

{{/* Vendor endpoints' API keys (plan.vendors, from the spec's models[].source.endpoint):
     each from its existing Secret, on every Ray container because router replicas run on
     any. The chart never carries a key. Models of one vendor may share a variable, but only
     with the same Secret and key. */}}
{{- define "govllm.vendorCredentials" -}}
{{- $seen := dict -}}
{{- range $v := .Values.plan.vendors }}
{{- if $v.credentialEnv }}
{{- $ref := printf "%s/%s" $v.secret.name $v.secret.key }}
{{- $prev := get $seen $v.credentialEnv }}
{{- if and $prev (ne $prev $ref) }}
{{- fail (printf "plan.vendors: %s is read from Secret key %s for one model and %s for model %s; one variable holds one key (give the model its own credential_env)" $v.credentialEnv $prev $ref $v.model) }}
{{- end }}
{{- if not $prev }}
{{- $_ := set $seen $v.credentialEnv $ref }}
- name: {{ $v.credentialEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.secret.name }}
      key: {{ $v.secret.key }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The vendors' private CA bundles: vendorCA.existingConfigMap, read-only at
     /etc/govllm/vendor-ca (cluster/render/helm_values.py VENDOR_CA_DIR) on every Ray container;
     required once a vendor endpoint names a caBundle there. */}}
{{- define "govllm.vendorCADir" -}}/etc/govllm/vendor-ca{{- end }}

{{- define "govllm.vendorCAConfigMap" -}}
{{- $needs := list -}}
{{- $files := list -}}
{{- range $v := .Values.plan.vendors }}{{- if $v.caBundle }}
{{- $needs = append $needs (printf "%s (%s)" $v.model $v.caBundle) }}
{{- $files = append $files (printf "--from-file=%s=<PEM file>" (base $v.caBundle)) }}
{{- end }}{{- end }}
{{- if and $needs (not .Values.vendorCA.existingConfigMap) -}}
{{- fail (printf "vendorCA.existingConfigMap is required: vendor endpoints %s trust a private CA bundle mounted from it at %s. Create the ConfigMap once: `kubectl -n %s create configmap govllm-vendor-ca %s`, then set vendorCA.existingConfigMap=govllm-vendor-ca (docs/operations.md, Vendor-hosted and external endpoints)" (join ", " $needs) (include "govllm.vendorCADir" .) .Release.Namespace (join " " (uniq $files))) -}}
{{- end -}}
{{- .Values.vendorCA.existingConfigMap -}}
{{- end }}

{{- define "govllm.vendorCAMount" -}}
{{- if include "govllm.vendorCAConfigMap" . }}
- name: vendor-ca
  mountPath: {{ include "govllm.vendorCADir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "govllm.vendorCAVolume" -}}
{{- with include "govllm.vendorCAConfigMap" . }}
- name: vendor-ca
  configMap:
    name: {{ . }}
{{- end }}
{{- end }}

{{/* Environment of every container: the shared store, object storage, offline caches. */}}
{{- define "govllm.env" -}}
- name: {{ .Values.plan.store.urlEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.existingSecret }}
      key: {{ .Values.store.urlKey }}
- name: AWS_REGION
  value: {{ .Values.region | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.region | quote }}
{{- with .Values.objectStore.endpointUrl }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
{{- if eq .Values.objectStore.credentials.mode "secret" }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.credentials.existingSecret }}
      key: {{ .Values.objectStore.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.credentials.existingSecret }}
      key: {{ .Values.objectStore.credentials.secretAccessKeyKey }}
{{- end }}
- name: HOME
  value: /tmp/home
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: HF_HUB_OFFLINE
  value: "1"
- name: VLLM_NO_USAGE_STATS
  value: "1"
- name: DO_NOT_TRACK
  value: "1"
{{- end }}

{{- define "govllm.resources" -}}
requests:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory | quote }}
  {{- with .gpus }}
  nvidia.com/gpu: {{ . | quote }}
  {{- end }}
limits:
  cpu: {{ .cpu | quote }}
  memory: {{ .memory | quote }}
  {{- with .gpus }}
  nvidia.com/gpu: {{ . | quote }}
  {{- end }}
{{- end }}

{{- define "govllm.baseVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: shm
  mountPath: /dev/shm
- name: state
  mountPath: {{ include "govllm.stateDir" . }}
{{- end }}

{{- define "govllm.baseVolumes" -}}
- name: tmp
  emptyDir: {}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.sharedMemory.sizeLimit }}
- name: state
  emptyDir: {}
{{- end }}

{{/* The audit spool: one ReadWriteMany claim, mounted on every Ray pod because a router
     replica can run on any of them (its chain directory is its own; any pod's uploader
     seals and uploads what a dead replica left). Only when the spec enables the audit. */}}
{{- define "govllm.auditSpoolClaim" -}}
{{- default (printf "%s-audit-spool" (include "govllm.fullname" .)) .Values.audit.spool.persistence.existingClaim -}}
{{- end }}

{{- define "govllm.auditSpoolMount" -}}
{{- if .Values.plan.audit.enabled }}
- name: audit-spool
  mountPath: {{ .Values.plan.audit.spoolDir }}
{{- end }}
{{- end }}

{{- define "govllm.auditSpoolVolume" -}}
{{- if .Values.plan.audit.enabled }}
- name: audit-spool
  persistentVolumeClaim:
    claimName: {{ include "govllm.auditSpoolClaim" . }}
{{- end }}
{{- end }}

{{/* Node selector of a GPU class: the values' entry, else GPU Feature Discovery's product label. */}}
{{- define "govllm.gpuNodeSelector" -}}
{{- $products := dict "a100-40gb" "NVIDIA-A100-SXM4-40GB" "a100-80gb" "NVIDIA-A100-SXM4-80GB" "h100-80gb" "NVIDIA-H100-80GB-HBM3" "h200-141gb" "NVIDIA-H200" "l4-24gb" "NVIDIA-L4" "l40s-48gb" "NVIDIA-L40S" -}}
{{- $class := index .root.Values.gpuNodes.classes .gpuClass | default dict -}}
{{- if $class.nodeSelector -}}
{{- toYaml $class.nodeSelector -}}
{{- else if hasKey $products .gpuClass -}}
nvidia.com/gpu.product: {{ index $products .gpuClass }}
{{- else -}}
{{- fail (printf "gpuNodes.classes.%s.nodeSelector is missing: say which nodes carry this GPU class" .gpuClass) -}}
{{- end -}}
{{- end }}
