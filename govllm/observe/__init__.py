"""What the operator's terminal shows of the running application: `govllm top` (a live view
read from Prometheus or from the metrics endpoints) and `govllm metrics targets` (the local
run's scrape targets for a Prometheus). docs/observability.md."""
