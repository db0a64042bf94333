#!/usr/bin/env python3
"""Times an ONNX model in onnxruntime (one thread) the way verge-infer's bench times tract.

    pip install --user numpy onnxruntime
    python3 models/bench_ort.py [--model models/default/model.onnx]
        [--inputs models/default/heldout.f32] [--batch 1 64] [--seconds 2]

Inputs are the rows of a held-out file (27 float32 features + 1 label per row), cycled. For each
batch size: a tenth of the time warming up, then `session.run` on consecutive batches, each call
timed with perf_counter_ns; throughput is rows over the summed call times. Prints JSON: {"onnxruntime": version, "threads": 1, "results":
[{"batch", "calls", "predictions_per_s", "p50_us", "p99_us"}]}. `cargo run --release -p
verge-infer --example bench` runs this and prints the ratios.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
FEATURES = 27


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    rank = math.ceil(p / 100.0 * len(sorted_vals))
    return sorted_vals[min(max(rank, 1), len(sorted_vals)) - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(HERE, "default", "model.onnx"))
    ap.add_argument("--inputs", default=os.path.join(HERE, "default", "heldout.f32"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--calls-max", type=int, default=2_000_000)
    a = ap.parse_args()

    raw = np.fromfile(a.inputs, dtype="<f4").reshape(-1, FEATURES + 1)
    rows = np.ascontiguousarray(raw[:, :FEATURES], dtype=np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = []
    for b in a.batch:
        n = rows.shape[0]
        pool = np.concatenate([rows, rows[: max(b, 1)]])
        while pool.shape[0] < n + b:
            pool = np.concatenate([pool, rows[:1]])
        # Pre-cut batches, so slicing is not timed.
        batches = [np.ascontiguousarray(pool[o:o + b]) for o in range(0, n, b)]
        k = 0
        end = time.perf_counter() + a.seconds / 10
        while time.perf_counter() < end:
            sess.run(None, {name: batches[k % len(batches)]})
            k += 1
        lat = []
        start = time.perf_counter()
        end = start + a.seconds
        pc = time.perf_counter_ns
        while time.perf_counter() < end and len(lat) < a.calls_max:
            x = batches[k % len(batches)]
            t = pc()
            sess.run(None, {name: x})
            lat.append((pc() - t) / 1000.0)
            k += 1
        # Throughput over the time spent inside run(), not the loop around it (the Rust bench
        # counts the same way), so the interpreter's own overhead between calls is not charged.
        total = sum(lat) / 1e6
        lat.sort()
        out.append({"batch": b, "calls": len(lat),
                    "predictions_per_s": len(lat) * b / total if total > 0 else 0.0,
                    "p50_us": percentile(lat, 50), "p99_us": percentile(lat, 99)})
    print(json.dumps({"onnxruntime": ort.__version__, "threads": 1, "results": out}))


if __name__ == "__main__":
    main()
