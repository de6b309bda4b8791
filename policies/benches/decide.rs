//! Criterion: the cost of one decision per policy with 8, 64 and 512
//! workers (the proxy pays it on every request), and of the route lookup.
//!
//! `cargo bench -p policies -- --warm-up-time 1 --measurement-time 2`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use policies::{Package, PolicySet, Request, View, Warm, Workers};

#[path = "../tests/common/mod.rs"]
mod common;

/// A warm index that answers like a small per-worker bitset would.
struct BitsWarm;
impl Warm for BitsWarm {
    #[inline]
    fn is_warm(&self, w: usize, key: u64) -> bool {
        (key >> (w % 64)) & 1 == 1
    }
}

fn decide(c: &mut Criterion) {
    let names: Vec<String> = (0..1024).map(|i| format!("function-{i}")).collect();
    let sessions: Vec<String> = (0..1024).map(|i| format!("session-{i:08x}")).collect();
    let pk = [
        Package {
            name: "numpy",
            cost: 90,
        },
        Package {
            name: "requests",
            cost: 20,
        },
    ];
    for n in [8usize, 64, 512] {
        let keys = common::keys(n);
        let set = common::set(&keys);
        // Moderate, uneven load; one worker in 16 down.
        let snap: Vec<(bool, u32, u32)> = (0..n)
            .map(|i| {
                (
                    i % 16 != 5,
                    (i * 7 % 5) as u32,
                    1000 + (i * 13 % 200) as u32,
                )
            })
            .collect();
        let workers = Workers::from_snapshot(&snap);
        for name in common::NAMES {
            let route = set.by_name(name).unwrap();
            let mut g = c.benchmark_group(format!("decide/{name}"));
            let mut i = 0usize;
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    i = (i + 1) & 1023;
                    // Half the requests carry a session (the chain's first member).
                    let s = (i & 1 == 0).then(|| sessions[i].as_str());
                    let req = Request::new(&names[i])
                        .packages(&pk)
                        .session(s)
                        .db_key(Some(&sessions[i ^ 1]));
                    black_box(route.pick(black_box(&req), &View::with_warm(&workers, &BitsWarm)))
                })
            });
            g.finish();
        }
    }
    // Routing: exact hit, glob hit, default.
    let set = PolicySet::build(&common::config(), &["a", "b"]).unwrap();
    let mut g = c.benchmark_group("route");
    for f in ["exact-fn", "img-resize", "other-function"] {
        g.bench_function(f, |b| {
            b.iter(|| black_box(set.route(black_box(f))).name().len())
        });
    }
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
