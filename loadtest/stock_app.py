"""Stock Ray Serve LLM (`build_openai_app`), the baseline (b) of `make bench`.

Nothing here is govllm's: one LLMConfig with the same engine arguments as the
other stacks, Serve's default proxy and Ray Serve LLM's default ingress. With
RAY_SERVE_ENABLE_HA_PROXY=1 and RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 in the
environment (bench_stacks' `stock-direct`), the same call builds Ray's direct
streaming instead: HAProxy asks the ingress's /internal/route for a replica and
streams from that replica's own HTTP port.
Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import threading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--stream-batching-interval-ms", type=float, default=None,
                        help="Override Ray Serve LLM's 50 ms default (for the 'what we tried' rows).")
    parser.add_argument("--omp-threads-bind", default="auto",
                        help="The engine's VLLM_CPU_OMP_THREADS_BIND (the same for every stack compared).")
    args = parser.parse_args()

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        experimental = {}
        if args.stream_batching_interval_ms is not None:
            experimental["stream_batching_interval_ms"] = args.stream_batching_interval_ms
        config = LLMConfig(
            model_loading_config={"model_id": args.model_id, "model_source": args.model_path},
            accelerator_type=None,
            placement_group_config={"bundles": [{"CPU": 1}]},
            engine_kwargs={"dtype": "float32", "enforce_eager": True, "max_model_len": args.max_model_len},
            runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1",
                                      "VLLM_CPU_OMP_THREADS_BIND": args.omp_threads_bind}},
            experimental_configs=experimental,
        )
        serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
        print("READY", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
