//! What a plain `EventSource` on `uni_sse` costs per delivery for its recovery: following each frame's
//! position ([`Positions::observe`]) and writing the event id, beside the frame alone.
//!
//! `cargo bench -p herald --bench stream_positions`
// criterion_group! and criterion_main! generate functions that cannot carry docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use herald::protocol::centrifuge::uni::Positions;

/// A publication as a unidirectional client receives it, with a 100-byte JSON payload.
fn publication(offset: u64) -> Vec<u8> {
    let payload = format!(r#"{{"text":"{}","n":{offset}}}"#, "x".repeat(84));
    format!(r#"{{"channel":"news","pub":{{"data":{payload},"offset":{offset}}}}}"#).into_bytes()
}

fn positions(c: &mut Criterion) {
    let mut group = c.benchmark_group("uni_sse event id");
    for channels in [1, 10] {
        let mut positions = Positions::asked(b"{}");
        for n in 0..channels {
            let channel = if n == 0 {
                "news".to_owned()
            } else {
                format!("channel-{n}")
            };
            let subscribe = format!(
                r#"{{"channel":"{channel}","subscribe":{{"recoverable":true,"epoch":"abcd","offset":1}}}}"#
            );
            positions.observe(subscribe.as_bytes());
        }
        let frame = publication(2);
        group.bench_function(format!("{channels} channel(s)"), |b| {
            b.iter(|| {
                let moved = positions.observe(black_box(&frame));
                black_box(moved.then(|| positions.event_id()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, positions);
criterion_main!(benches);
