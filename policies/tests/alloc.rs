//! Proves that a decision allocates nothing, for every policy, with a
//! counting global allocator (per thread, so parallel tests do not mix).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use policies::{Package, Request, View, Warm, Workers};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

struct EvenWarm;
impl Warm for EvenWarm {
    fn is_warm(&self, w: usize, _: u64) -> bool {
        w.is_multiple_of(2)
    }
}

#[test]
fn the_counter_sees_allocations() {
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))) >= 1);
}

#[test]
fn no_decision_allocates() {
    let keys = common::keys(64);
    let set = common::set(&keys);
    let snap: Vec<(bool, u32, u32)> = (0..64)
        .map(|i| (i % 7 != 3, (i * 5 % 11) as u32, 100))
        .collect();
    let w = Workers::from_snapshot(&snap);
    let names: Vec<String> = (0..200).map(|i| format!("img-{i}")).collect();
    let pk = [
        Package {
            name: "numpy",
            cost: 9,
        },
        Package {
            name: "six",
            cost: 1,
        },
    ];
    for name in common::NAMES {
        let r = set.by_name(name).unwrap();
        let n = allocations(|| {
            for (i, f) in names.iter().enumerate() {
                let s = (i % 3 != 0).then_some(f.as_str());
                let req = Request::new(f)
                    .session(s)
                    .db_key(Some("shard-1"))
                    .packages(&pk);
                let view = View::with_warm(&w, &EvenWarm);
                let p = r.pick(&req, &view);
                w.start(p.first().unwrap());
                std::hint::black_box(p);
            }
        });
        assert_eq!(n, 0, "policy {name} allocated {n} times in 200 decisions");
    }
    // Routing (exact, glob, default) and the set-level pick too.
    let n = allocations(|| {
        for f in ["exact-fn", "img-1", "other"] {
            let req = Request::new(f);
            std::hint::black_box(set.pick(&req, &View::new(&w)));
        }
    });
    assert_eq!(n, 0, "routing allocated");
}
