#!/usr/bin/env python3
"""Trains a plain PyTorch `nn.Linear(27, 1)` on the default model's features and exports it with
`torch.onnx.export` (PyTorch's default exporter), to prove that a model straight out of PyTorch
loads and runs in verge-infer.

    pip install --user torch onnxscript onnx onnxruntime numpy   # torch's CPU index if reachable
    python3 models/export_linear.py [--work DIR]                 # DIR: train.py's SUMO runs

Writes models/linear/{model.onnx, model.toml, metrics.json} and
crates/verge-infer/tests/fixtures/linear_golden.json (inputs and onnxruntime's outputs).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import features as F  # noqa: E402
import train as T  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", help="directory of train.py's SUMO runs (reused if present)")
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="verge-linear-")
    torch.manual_seed(0)

    Xs, ys = [], []
    for seed, period in T.TRAIN_RUNS:
        d = os.path.join(work, f"train-s{seed}-p{period}")
        if not os.path.exists(os.path.join(d, "out", "e2.xml")):
            T.run_grid(d, seed, period)
        X, y, _, _, _ = T.dataset(d)
        Xs.append(X)
        ys.append(y)
    X = torch.from_numpy(np.concatenate(Xs))
    y = torch.from_numpy(np.concatenate(ys))[:, None]
    hd = os.path.join(work, f"heldout-s{T.HELDOUT_RUN[0]}-p{T.HELDOUT_RUN[1]}")
    if not os.path.exists(os.path.join(hd, "out", "e2.xml")):
        T.run_grid(hd, *T.HELDOUT_RUN)
    Xh, yh, _, _, _ = T.dataset(hd)

    model = torch.nn.Linear(F.FEATURES, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(a.epochs):
        perm = torch.randperm(X.shape[0])
        for i in range(0, X.shape[0], 256):
            idx = perm[i:i + 256]
            opt.zero_grad()
            loss = torch.nn.functional.l1_loss(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()

    out_dir = os.path.join(HERE, "linear")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    torch.onnx.export(model, (torch.zeros(2, F.FEATURES),), path,
                      input_names=["features"], output_names=["next_count"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    data = path + ".data"
    if os.path.exists(data) and os.path.getsize(data) == 0:
        os.remove(data)
    T.write_manifest(os.path.join(out_dir, "model.toml"), "linear", "1.0.0",
                     f"plain torch nn.Linear(27, 1) exported by torch {torch.__version__}",
                     "features", "next_count", ["batch", F.FEATURES], ["batch", 1])

    pred = T.ort_run(path, Xh)[:, 0]
    metrics = {"torch": torch.__version__, "heldout_samples": int(len(yh)),
               "mae_model": T.mae(pred, yh),
               "mae_last_value": T.mae(Xh[:, (F.K - 1) * F.WINDOW_VALUES], yh)}
    print(json.dumps(metrics, indent=2))
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        f.write(json.dumps(metrics, indent=2) + "\n")

    rng = np.random.default_rng(1)
    G = np.concatenate([np.zeros((1, F.FEATURES), np.float32),
                        Xh[rng.choice(len(yh), size=31, replace=False)]])
    T.golden("linear", path, G)


if __name__ == "__main__":
    main()
