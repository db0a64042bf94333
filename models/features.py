"""The feature contract of Verge's default model, in Python.

This is the twin of `crates/verge-infer/src/features.rs`: both build the same float32 vector from
the same window records, and `crates/verge-infer/tests/fixtures/features.json` (written by
models/train.py with this module) proves it in `cargo test -p verge-infer`.

A window record is what `verge-traffic::window::Window::to_record` appends to an approach's
aggregate stream: `[vehicle_count, mean_occupancy, mean_speed, max_queue, readings, late]`, with
`mean_speed = -1` when no vehicle passed.

Features (float32, 27 values, in this order):
  - K = 6 past windows of the approach, oldest first, the newest being the window that just
    closed; for each, 4 values: vehicle_count, mean_occupancy, mean_speed, max_queue.
    `mean_speed` -1 (no vehicle) becomes 0: the count of 0 beside it already says "nobody
    passed", and 0 keeps the input continuous. A window that is missing (fewer than K windows
    so far, or a gap in the stream) is four zeros, exactly like an empty window.
  - U = 3 upstream slots: the upstream neighbours' predictions of *their* next-window count for
    the approaches that feed this one, in the slot order straight-through, left-turn, right-turn
    feeder. A slot with no feeder (a fringe approach) or no prediction shared yet is 0.
Output: float32 [batch, 1], the approach's vehicle count in the next window.
"""

K = 6
WINDOW_VALUES = 4
U = 3
FEATURES = K * WINDOW_VALUES + U  # 27
NO_SPEED = -1.0


def window_values(record_values):
    """The 4 feature values of one window record's values (at least 4 columns)."""
    count, occ, speed, queue = (float(v) for v in record_values[:4])
    if speed < 0.0:
        speed = 0.0
    return [count, occ, speed, queue]


def build(history, upstream):
    """Features from `history` (window record value lists, oldest first; only the last K are used;
    None stands for a missing window) and `upstream` (up to U predictions, None = not shared)."""
    out = []
    recent = list(history)[-K:]
    for _ in range(K - len(recent)):
        out.extend([0.0] * WINDOW_VALUES)
    for rec in recent:
        out.extend([0.0] * WINDOW_VALUES if rec is None else window_values(rec))
    ups = list(upstream)[:U]
    ups += [None] * (U - len(ups))
    out.extend(0.0 if u is None else float(u) for u in ups)
    return out


def build_from_records(records, last_start_ms, window_ms, upstream):
    """Features from timestamped window records `[(ts_ms, values), ...]` (the stream as stored; any
    order), for the window starting at `last_start_ms` as the newest: the K slots are the windows
    starting at `last_start_ms - (K-1)*window_ms` .. `last_start_ms`; a slot with no record is
    missing (zeros); records outside the slots are ignored. Mirrors `features::build` in Rust."""
    first = last_start_ms - (K - 1) * window_ms
    slots = [None] * K
    for ts, values in records:
        if ts < first or ts > last_start_ms:
            continue
        if (ts - first) % window_ms != 0:
            raise ValueError(f"record at {ts} ms is not on the {window_ms} ms window grid")
        slots[(ts - first) // window_ms] = values
    return build(slots, upstream)
