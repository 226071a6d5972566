//! Replay allocates nothing per event once caches are warm: a counting global allocator
//! watches this thread while the momentum DAG and a one-input SMA DAG process rows.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use qmtl::replay::Executor;
use qmtl::strategies::MomentumStrategy;
use qmtl::{Dag, DagBuilder, Node, OnMissing, Row, StreamInput};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread-locals may already be gone while a thread shuts down.
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            }
        });
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(|n| n.get())
}

fn sma20() -> Dag {
    let mut b = DagBuilder::new();
    let bars = b
        .stream_input(
            StreamInput::new("bars")
                .interval("1h")
                .period(20)
                .fields(["close"]),
        )
        .unwrap();
    let sma = b
        .node(
            Node::new("sma")
                .input(&bars)
                .period(20)
                .fields(["sma"])
                .compute("sma@1", |v| {
                    let close = v.input(0).field("close")?;
                    Some(Row::one(close.iter().sum::<f64>() / close.len() as f64))
                }),
        )
        .unwrap();
    b.finish(&sma)
}

fn steady_state_allocations(dag: &Dag, width: usize) -> u64 {
    let mut exec = Executor::new(dag, OnMissing::Continue);
    let row = [1.5; 5];
    let mut ts = 0i64;
    let mut push = |exec: &mut Executor, n: usize| {
        for _ in 0..n {
            ts += 3600;
            exec.push(0, ts, &row[..width]).unwrap();
        }
    };
    push(&mut exec, 100);
    allocations_during(|| push(&mut exec, 10_000))
}

#[test]
fn replay_allocates_nothing_per_event_in_steady_state() {
    let boxed = allocations_during(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(boxed, 1, "the counter sees this thread's allocations");
    assert_eq!(steady_state_allocations(&sma20(), 1), 0, "sma20");
    let momentum = Dag::build(&MomentumStrategy::default()).unwrap();
    assert_eq!(steady_state_allocations(&momentum, 5), 0, "momentum");
}
