//! The batcher driving a real model the way the inference actor will: requests (one feature row
//! each) arrive on a simulated clock, batches go when full or when their oldest request has
//! waited `max_wait`, and every answer equals the row predicted alone.

use std::path::Path;
use std::time::Duration;

use verge_infer::features::{FEATURES, SIGNATURE};
use verge_infer::heldout::read_rows;
use verge_infer::{Batcher, BatcherConfig, Model};

#[test]
fn batched_answers_equal_single_answers() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let model = Model::load(models.join("default/model.toml"), Some(&SIGNATURE)).expect("loads");
    let rows = read_rows(&models.join("default/heldout.f32")).expect("rows");
    let n = 500.min(rows.labels.len());
    let mut batcher = Batcher::new(BatcherConfig {
        max_batch: 64,
        max_wait: Duration::from_millis(2),
        queue_max: 256,
    })
    .expect("valid");
    // (request id, answer) in the order answers come out.
    let mut answers: Vec<(usize, f32)> = Vec::new();
    let mut batch_sizes = Vec::new();
    let mut input = Vec::with_capacity(64 * FEATURES);
    let mut run = |requests: Vec<usize>, answers: &mut Vec<(usize, f32)>| {
        input.clear();
        for &r in &requests {
            input.extend_from_slice(&rows.features[r * FEATURES..(r + 1) * FEATURES]);
        }
        let out = model.predict(&input).expect("predicts");
        batch_sizes.push(requests.len());
        answers.extend(requests.into_iter().zip(out));
    };
    // Bursts of arrivals 0.1 ms apart, with a 5 ms lull every 100 requests, so both full and
    // timed-out batches occur.
    let mut now = Duration::ZERO;
    for r in 0..n {
        now += if r % 100 == 99 {
            Duration::from_millis(5)
        } else {
            Duration::from_micros(100)
        };
        while let Some(b) = batcher.poll(now) {
            run(b.requests, &mut answers);
        }
        batcher.push(now, r).expect("room");
    }
    while let Some(b) = batcher.flush(now) {
        run(b.requests, &mut answers);
    }
    assert_eq!(answers.len(), n);
    assert!(batch_sizes.iter().all(|s| (1..=64).contains(s)));
    assert!(
        batch_sizes.contains(&20),
        "a batch cut by max_wait: 2 ms of 0.1 ms arrivals"
    );
    for (i, (r, y)) in answers.iter().enumerate() {
        assert_eq!(*r, i, "answers come out in arrival order");
        let alone = model
            .predict(&rows.features[r * FEATURES..(r + 1) * FEATURES])
            .expect("one");
        assert!(
            (alone[0] - y).abs() <= 1e-5,
            "row {r}: batched {y}, alone {}",
            alone[0]
        );
    }
}
