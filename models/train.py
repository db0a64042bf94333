#!/usr/bin/env python3
"""Trains Verge's default next-window vehicle-count model on SUMO's 3x3 grid and exports it to ONNX.

    pip install --user numpy scikit-learn onnx onnxruntime     # (export_linear.py also needs torch)
    python3 models/train.py [--work DIR] [--hidden 64]   # ~3 min on 2 busy cores; needs SUMO

What it does (models/README.md has the why):
  1. Runs simulations/sumo/make_grid.sh for several demand seeds and periods (training) and one
     held-out run with a seed no training run uses, detectors at a 10 s period.
  2. Turns detector rows into readings and aggregates them into 10 s windows per approach (an
     approach = an incoming edge at a traffic light = lane id without its `_N`), with the rules of
     verge-traffic's Aggregator: count summed, occupancy averaged over readings, speed weighted by
     count over readings that saw vehicles (-1 if none), queue maxed.
  3. Builds features with models/features.py (the twin of verge-infer's `features` module).
  4. Trains a small MLP (scikit-learn; default one hidden layer of 64 ReLU units), twice: with upstream slots (default) and with the
     upstream slots zeroed (default-noshare), and exports both to ONNX with the input scaling
     folded into the first layer, so the model takes raw features.
  5. Writes models/<name>/{model.onnx, model.toml, metrics.json}, golden fixtures (inputs and
     onnxruntime's outputs) under crates/verge-infer/tests/fixtures/, the feature fixture that
     proves Python and Rust build the same vector, and models/default/heldout.f32 (held-out
     features and labels) so `cargo run -p verge-infer --example heldout` reproduces the MAE.
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import features as F  # noqa: E402

MAKE_GRID = os.path.join(ROOT, "simulations", "sumo", "make_grid.sh")
FIXTURES = os.path.join(ROOT, "crates", "verge-infer", "tests", "fixtures")
WINDOW_S = 10
# (seed, mean seconds between departures): light to heavy demand. The held-out run uses a seed
# no training run uses.
TRAIN_RUNS = [(1, 0.7), (2, 1.0), (3, 1.4), (4, 0.85), (5, 1.2), (6, 2.0), (7, 0.6), (8, 1.0)]
HELDOUT_RUN = (101, 1.0)
END_S = 900
SLOT_DIRS = ["s", "l", "r"]  # upstream slot order: straight-through, left-turn, right-turn feeder


def run_grid(out_dir, seed, period):
    subprocess.run(
        [MAKE_GRID, out_dir, "--seed", str(seed), "--freq", str(WINDOW_S), "--end", str(END_S),
         "--period", str(period)],
        check=True, stdout=subprocess.DEVNULL)


def feeders(net_path):
    """approach (edge id) -> [feeder edge or None] in SLOT_DIRS order: the incoming edges at the
    approach's origin junction with a connection onto it, by the connection's direction."""
    root = ET.parse(net_path).getroot()
    incoming = set()
    for c in root.iter("connection"):
        if c.get("tl"):
            incoming.add(c.get("from"))
    out = {}
    for edge in incoming:
        out[edge] = [None] * F.U
    for c in root.iter("connection"):
        frm, to, d = c.get("from"), c.get("to"), c.get("dir")
        if frm.startswith(":") or to not in out or frm not in incoming or d not in SLOT_DIRS:
            continue
        slot = SLOT_DIRS.index(d)
        prev = out[to][slot]
        if prev is not None and prev != frm:
            raise SystemExit(f"two {d} feeders for {to}: {prev}, {frm}")
        out[to][slot] = frm
    return out


def approach_of(det_id):
    # e1_<tls>_<edge>_<lane>; edge ids have no `_`.
    return det_id.split("_")[2]


def readings(out_dir):
    """Yields (approach, window index, count, occupancy, speed, queue) per detector row: the
    reading a SUMO replay source gives the node (see README: E1 gives count, occupancy and speed;
    E2 gives occupancy and the queue)."""
    for _, el in ET.iterparse(os.path.join(out_dir, "out", "e1.xml")):
        if el.tag != "interval":
            continue
        w = int(round(float(el.get("begin")))) // WINDOW_S
        speed = float(el.get("speed"))
        yield (approach_of(el.get("id")), w, float(el.get("nVehContrib")),
               float(el.get("occupancy")), max(speed, 0.0), 0.0)
        el.clear()
    for _, el in ET.iterparse(os.path.join(out_dir, "out", "e2.xml")):
        if el.tag != "interval":
            continue
        w = int(round(float(el.get("begin")))) // WINDOW_S
        yield (approach_of(el.get("id")), w, 0.0, float(el.get("meanOccupancy")), 0.0,
               float(el.get("maxJamLengthInVehicles")))
        el.clear()


def windows(out_dir):
    """approach -> array [n_windows, 4] of window record values (count, mean occupancy, mean
    speed or -1, max queue), following verge-traffic's Aggregator."""
    acc = defaultdict(lambda: defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    n = 0
    for a, w, count, occ, speed, queue in readings(out_dir):
        s = acc[a][w]
        s[0] += 1
        s[1] += count
        s[2] += occ
        if count > 0:
            s[3] += speed * count
            s[4] += count
        s[5] = max(s[5], queue)
        n = max(n, w + 1)
    out = {}
    for a, per in acc.items():
        arr = np.zeros((n, 4))
        for w in range(n):
            r, count, occ, sw, sv, q = per.get(w, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
            arr[w] = [count, occ / r if r else 0.0, sw / sv if sv > 0 else F.NO_SPEED, q]
        out[a] = arr
    return out


def dataset(out_dir, upstream_source="actual"):
    """Features and labels of every (approach, window t) with a next window t+1. Upstream slot j of
    approach X is the feeder's *actual* count in window t+1 (what a perfect upstream prediction
    would say), zero when the slot has no feeder. Returns X [n, 27], y [n], approach ids, t."""
    wins = windows(out_dir)
    feed = feeders(os.path.join(out_dir, "grid.net.xml"))
    xs, ys, meta = [], [], []
    for a in sorted(wins):
        arr = wins[a]
        for t in range(arr.shape[0] - 1):
            hist = [arr[i] for i in range(max(0, t - F.K + 1), t + 1)]
            ups = [None if f is None or f not in wins else float(wins[f][t + 1, 0])
                   for f in feed.get(a, [None] * F.U)]
            xs.append(F.build(hist, ups))
            ys.append(arr[t + 1, 0])
            meta.append((a, t))
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.float32), meta, wins, feed


def train_mlp(X, y, seed, hidden):
    from sklearn.neural_network import MLPRegressor
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd < 1e-6] = 1.0  # a constant column (e.g. zeroed upstream slots) passes through as 0
    m = MLPRegressor(hidden_layer_sizes=hidden, activation="relu", alpha=1e-3,
                     learning_rate_init=1e-3, max_iter=300, early_stopping=True,
                     validation_fraction=0.1, n_iter_no_change=15, random_state=seed)
    m.fit((X - mu) / sd, y)
    # Fold the input scaling into the first layer: W' = W / sd, b' = b - (mu / sd) @ W.
    Ws = [w.astype(np.float64) for w in m.coefs_]
    bs = [b.astype(np.float64) for b in m.intercepts_]
    bs[0] = bs[0] - (mu / sd) @ Ws[0]
    Ws[0] = Ws[0] / sd[:, None]
    return Ws, bs


def mlp_numpy(Ws, bs, X):
    h = X.astype(np.float64)
    for i, (w, b) in enumerate(zip(Ws, bs)):
        h = h @ w + b
        if i < len(Ws) - 1:
            h = np.maximum(h, 0.0)
    return h


def export_onnx(Ws, bs, path, doc):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []
    cur = "features"
    for i, (w, b) in enumerate(zip(Ws, bs)):
        inits.append(numpy_helper.from_array(w.T.astype(np.float32), f"w{i}"))  # [out, in]
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"b{i}"))
        out = "next_count" if i == len(Ws) - 1 else f"h{i}"
        gemm_out = out if i == len(Ws) - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [gemm_out], transB=1))
        if i < len(Ws) - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        cur = out
    graph = helper.make_graph(
        nodes, "verge_next_count",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", F.FEATURES])],
        [helper.make_tensor_value_info("next_count", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="verge models/train.py", doc_string=doc)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def ort_run(path, X):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return s.run(None, {name: np.ascontiguousarray(X, dtype=np.float32)})[0]


def write_manifest(path, name, version, description, input_name, output_name, in_shape, out_shape):
    def shape(s):
        return "[" + ", ".join('"batch"' if d == "batch" else str(d) for d in s) + "]"
    with open(path, "w") as f:
        f.write(f'# Written by models/train.py. See models/README.md.\n')
        f.write(f'name = "{name}"\nversion = "{version}"\nfile = "model.onnx"\n')
        f.write(f'description = "{description}"\n\n')
        f.write(f'[input]\nname = "{input_name}"\nshape = {shape(in_shape)}\n\n')
        f.write(f'[output]\nname = "{output_name}"\nshape = {shape(out_shape)}\n')


def golden(name, onnx_path, X):
    """The golden fixture: inputs and onnxruntime's outputs, floats printed exactly."""
    Y = ort_run(onnx_path, X)
    os.makedirs(FIXTURES, exist_ok=True)
    with open(os.path.join(FIXTURES, f"{name}_golden.json"), "w") as f:
        json.dump({"model": f"models/{name}/model.toml", "producer": "onnxruntime",
                   "rows": int(X.shape[0]),
                   "inputs": [[float(v) for v in row] for row in X.astype(np.float32)],
                   "outputs": [[float(v) for v in row] for row in Y.astype(np.float32)]}, f)
        f.write("\n")


def mae(a, b):
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="directory for the SUMO runs (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--hidden", default="64",
                    help="hidden layer sizes, comma-separated (default 64: one layer; tract's cost "
                         "per call grows with the number of layers more than with their width)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="verge-train-")
    np.random.seed(args.seed)

    Xs, ys = [], []
    for seed, period in TRAIN_RUNS:
        d = os.path.join(work, f"train-s{seed}-p{period}")
        if not os.path.exists(os.path.join(d, "out", "e2.xml")):
            run_grid(d, seed, period)
        X, y, _, _, _ = dataset(d)
        Xs.append(X)
        ys.append(y)
        print(f"run seed={seed} period={period}: {len(y)} samples, mean count {y.mean():.2f}",
              file=sys.stderr)
    X = np.concatenate(Xs)
    y = np.concatenate(ys)
    hd = os.path.join(work, f"heldout-s{HELDOUT_RUN[0]}-p{HELDOUT_RUN[1]}")
    if not os.path.exists(os.path.join(hd, "out", "e2.xml")):
        run_grid(hd, *HELDOUT_RUN)
    Xh, yh, meta_h, wins_h, feed_h = dataset(hd)

    up = slice(F.K * F.WINDOW_VALUES, F.FEATURES)
    X_noshare = X.copy()
    X_noshare[:, up] = 0.0
    Xh_noshare = Xh.copy()
    Xh_noshare[:, up] = 0.0

    hidden = tuple(int(h) for h in args.hidden.split(","))
    W, b = train_mlp(X, y, args.seed, hidden)
    Wn, bn = train_mlp(X_noshare, y, args.seed, hidden)

    out_dirs = {}
    for name, (Ws, bs), desc in [
        ("default", (W, b), "next-window vehicle count per approach, with upstream slots"),
        ("default-noshare", (Wn, bn), "next-window vehicle count per approach, upstream slots zeroed in training"),
    ]:
        d = os.path.join(HERE, name)
        os.makedirs(d, exist_ok=True)
        export_onnx(Ws, bs, os.path.join(d, "model.onnx"), desc)
        write_manifest(os.path.join(d, "model.toml"), name, "1.0.0", desc, "features",
                       "next_count", ["batch", F.FEATURES], ["batch", 1])
        out_dirs[name] = d

    # Held-out figures, all from onnxruntime on the exported files.
    pred = ort_run(os.path.join(out_dirs["default"], "model.onnx"), Xh)[:, 0]
    pred_noshare = ort_run(os.path.join(out_dirs["default-noshare"], "model.onnx"), Xh_noshare)[:, 0]
    pred_zero_up = ort_run(os.path.join(out_dirs["default"], "model.onnx"), Xh_noshare)[:, 0]
    last_value = Xh[:, (F.K - 1) * F.WINDOW_VALUES]  # the newest window's count
    # Realistic sharing: each feeder's slot holds what its own node would predict (the no-share
    # model on the feeder's own windows) instead of the feeder's actual next count.
    noshare_by = {(a, t): p for (a, t), p in zip(meta_h, pred_noshare)}
    Xh_pred = Xh.copy()
    for i, (a, t) in enumerate(meta_h):
        for j, f in enumerate(feed_h.get(a, [None] * F.U)):
            Xh_pred[i, F.K * F.WINDOW_VALUES + j] = (
                max(0.0, float(noshare_by[(f, t)])) if f is not None and (f, t) in noshare_by else 0.0)
    pred_pred_up = ort_run(os.path.join(out_dirs["default"], "model.onnx"), Xh_pred)[:, 0]

    m_model, m_last = mae(pred, yh), mae(last_value, yh)
    metrics = {
        "heldout_run": {"seed": HELDOUT_RUN[0], "period_s": HELDOUT_RUN[1], "end_s": END_S,
                        "samples": int(len(yh))},
        "train_runs": [{"seed": s, "period_s": p} for s, p in TRAIN_RUNS],
        "train_samples": int(len(y)),
        "window_s": WINDOW_S,
        "hidden_layers": list(hidden),
        "mae_model": m_model,
        "mae_last_value": m_last,
        "improvement_over_last_value": 1.0 - m_model / m_last,
        "mae_noshare_model": mae(pred_noshare, yh),
        "mae_model_upstream_zeroed": mae(pred_zero_up, yh),
        "mae_model_upstream_predicted_by_noshare": mae(pred_pred_up, yh),
        "mean_label": float(np.mean(yh)),
        "notes": "upstream slots hold the feeders' actual next-window counts (a perfect upstream "
                 "prediction) in training and in mae_model; mae_model_upstream_predicted_by_noshare "
                 "fills them with the no-share model's predictions of the feeders instead.",
    }
    text = json.dumps(metrics, indent=2)
    print(text)
    with open(os.path.join(out_dirs["default"], "metrics.json"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dirs["default-noshare"], "metrics.json"), "w") as f:
        f.write(json.dumps({"heldout_run": metrics["heldout_run"],
                            "mae_model": metrics["mae_noshare_model"],
                            "mae_last_value": m_last}, indent=2) + "\n")

    # Held-out features and labels for the Rust reproduction: rows of 27 features + 1 label,
    # little-endian f32.
    with open(os.path.join(out_dirs["default"], "heldout.f32"), "wb") as f:
        f.write(np.concatenate([Xh, yh[:, None]], axis=1).astype("<f4").tobytes())

    # Golden fixtures: a spread of held-out rows plus edge cases (all zeros, no upstream, heavy).
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(yh), size=48, replace=False)
    G = np.concatenate([np.zeros((1, F.FEATURES), np.float32), Xh[idx], Xh_noshare[idx[:8]],
                        Xh[np.argsort(-yh)[:7]]])
    golden("default", os.path.join(out_dirs["default"], "model.onnx"), G)
    golden("default-noshare", os.path.join(out_dirs["default-noshare"], "model.onnx"), G)

    # Feature fixture: real held-out window records of a few approaches, as the stream stores them
    # (ts_ms = window start), with a gap, and the vector models/features.py builds from them.
    cases = []
    for a, t in [(sorted(wins_h)[0], 3), (sorted(wins_h)[5], 40), (sorted(wins_h)[17], 70)]:
        recs = [(int(i * WINDOW_S * 1000), [float(v) for v in wins_h[a][i]] + [4.0, 0.0])
                for i in range(max(0, t - 8), t + 1)]
        if t > 10:
            recs = [r for r in recs if r[0] != (t - 2) * WINDOW_S * 1000]  # a missing window
        ups = [None if f is None or f not in wins_h else float(wins_h[f][t + 1, 0])
               for f in feed_h.get(a, [None] * F.U)]
        vec = F.build_from_records(recs, t * WINDOW_S * 1000, WINDOW_S * 1000, ups)
        cases.append({"approach": a, "last_start_ms": t * WINDOW_S * 1000,
                      "window_ms": WINDOW_S * 1000,
                      "records": [{"ts_ms": ts, "values": v} for ts, v in recs],
                      "upstream": ups, "features": vec})
    with open(os.path.join(FIXTURES, "features.json"), "w") as f:
        json.dump({"producer": "models/features.py", "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"wrote models/default, models/default-noshare, fixtures; SUMO runs in {work}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
