//! A linearizability checker for one counter that starts at 0 and is only ever incremented by
//! one: the search of Wing & Gong with Lowe's memoization (WGL). A history is linearizable if
//! its operations can be put in one sequence that respects real time (an operation that
//! responded before another was invoked comes first) and in which every operation sees the
//! counter as it returned it.
//!
//! Times are logical: any totally ordered stamps in which a response observed before an
//! invocation gets the smaller stamp. Aborted increments are left out of the history; an
//! increment whose outcome is unknown (a timeout) may take effect anywhere after its
//! invocation, or never.

use std::collections::HashSet;
use std::fmt;

/// What an operation did, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An increment by one that returned the value after it.
    Increment(i64),
    /// An increment whose outcome the client never learned: applied once or not at all.
    IncrementUnknown,
    /// A read that returned this value.
    Read(i64),
}

/// One operation of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// When the client invoked it.
    pub invoke: u64,
    /// When the client learned its outcome; `None` for an unknown outcome, which bounds
    /// nothing.
    pub response: Option<u64>,
    /// What it did.
    pub kind: Kind,
}

impl Op {
    /// The counter after the operation, if it can run on `value`.
    fn apply(&self, value: i64) -> Option<i64> {
        match self.kind {
            Kind::Increment(v) => (value + 1 == v).then_some(v),
            Kind::IncrementUnknown => Some(value + 1),
            Kind::Read(v) => (value == v).then_some(value),
        }
    }

    fn must_take_effect(&self) -> bool {
        self.response.is_some()
    }

    /// The counter the operation must find. The counter never decreases, so once it has passed
    /// this, the operation can no longer be linearized.
    fn needs(&self) -> i64 {
        match self.kind {
            Kind::Increment(v) => v - 1,
            Kind::IncrementUnknown => i64::MAX,
            Kind::Read(v) => v,
        }
    }
}

/// Why a history is not linearizable: the longest prefix the search could order, and the
/// operations that were left.
#[derive(Debug)]
pub struct Violation {
    /// The search visited [`MAX_STATES`] states without an answer: the history may be
    /// linearizable after all.
    pub gave_up: bool,
    /// The longest linearizable prefix found, as indices into the history.
    pub prefix: Vec<usize>,
    /// The counter after that prefix.
    pub value: i64,
    /// The completed operations outside the prefix that could have come next in real time.
    pub stuck: Vec<(usize, Op)>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gave_up {
            write!(f, "undecided after {MAX_STATES} states; so far ")?;
        }
        write!(
            f,
            "not linearizable: the longest linearizable prefix has {} operations and leaves \
             the counter at {}; none of these can come next: {:?}",
            self.prefix.len(),
            self.value,
            self.stuck
        )
    }
}

/// A set of operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }

    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & 1 << (i % 64) != 0
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    /// The first index not in the set.
    fn first_clear(&self) -> usize {
        self.0
            .iter()
            .enumerate()
            .find(|(_, w)| **w != u64::MAX)
            .map_or(self.0.len() * 64, |(k, w)| {
                k * 64 + w.trailing_ones() as usize
            })
    }
}

/// How many states the search may visit before it gives up.
pub const MAX_STATES: usize = 2_000_000;

/// One level of the depth-first search: the state after `chosen` was linearized.
struct Frame {
    /// The operation (index into the sorted order) linearized to get here.
    chosen: Option<usize>,
    value: i64,
    /// The operations still to try next, the first to try last.
    candidates: Vec<usize>,
}

impl Frame {
    /// The state after `chosen`, with the operations that may come next: those that no other
    /// operation left must precede in real time (invoked by `bound`) and that find the counter
    /// as they need it. Two rules keep the search small without losing a linearization:
    ///
    /// - A read that sees the counter as it is goes next, alone: reads change nothing, so if
    ///   the rest can be linearized, it can with that read first.
    /// - Of the increments with unknown outcome, only the earliest invoked is tried: they
    ///   differ only in their invocations, and one that may come next now may also come later.
    fn new(ops: &[Op], lin: &Bits, chosen: Option<usize>, value: i64, bound: u64) -> Self {
        let window = (lin.first_clear()..ops.len())
            .take_while(|&i| ops[i].invoke <= bound)
            .filter(|&i| !lin.contains(i));
        let mut candidates = Vec::new();
        let mut unknown = None;
        for i in window {
            match ops[i].kind {
                Kind::Read(v) if v == value => {
                    candidates = vec![i];
                    unknown = None;
                    break;
                }
                Kind::Increment(v) if v == value + 1 => candidates.push(i),
                Kind::IncrementUnknown if unknown.is_none() => unknown = Some(i),
                _ => {}
            }
        }
        candidates.extend(unknown);
        candidates.reverse();
        Self {
            chosen,
            value,
            candidates,
        }
    }
}

/// Checks `history`; on failure, says how far the search got.
pub fn check(history: &[Op]) -> Result<(), Violation> {
    // In invocation order, so the operations that may come next are a prefix of those left.
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].invoke);
    let ops: Vec<Op> = order.iter().map(|&i| history[i]).collect();
    let n = ops.len();
    let must = ops.iter().filter(|o| o.must_take_effect()).count();

    let mut lin = Bits::new(n);
    let mut done = 0; // Completed operations linearized on the current path.
    let mut seen: HashSet<(Bits, i64)> = HashSet::new();
    // The longest linearizable prefix found, the counter after it and its set.
    let mut best: (Vec<usize>, i64, Bits) = (Vec::new(), 0, lin.clone());
    let mut path: Vec<usize> = Vec::new();
    let mut stack = vec![Frame::new(&ops, &lin, None, 0, window(&ops, &lin).0)];
    let mut gave_up = false;

    while let Some(top) = stack.last_mut() {
        if done == must {
            return Ok(());
        }
        if seen.len() >= MAX_STATES {
            gave_up = true;
            break;
        }
        let Some(i) = top.candidates.pop() else {
            // Every way on from here failed.
            if let Some(i) = top.chosen {
                lin.clear(i);
                path.pop();
                if ops[i].must_take_effect() {
                    done -= 1;
                }
            }
            stack.pop();
            continue;
        };
        let Some(value) = ops[i].apply(top.value) else {
            continue;
        };
        lin.set(i);
        if !seen.insert((lin.clone(), value)) {
            lin.clear(i);
            continue;
        }
        if path.len() + 1 > best.0.len() {
            best.0.clone_from(&path);
            best.0.push(i);
            best.1 = value;
            best.2.clone_from(&lin);
        }
        // A dead end unless every completed operation that may come soon still finds the
        // counter low enough (it never decreases).
        let (bound, floor) = window(&ops, &lin);
        if floor < value {
            lin.clear(i);
            continue;
        }
        path.push(i);
        if ops[i].must_take_effect() {
            done += 1;
        }
        stack.push(Frame::new(&ops, &lin, Some(i), value, bound));
    }

    let (prefix, value, lin) = best;
    let limit = window(&ops, &lin).0;
    let stuck = (0..n)
        .filter(|&i| !lin.contains(i) && ops[i].must_take_effect() && ops[i].invoke <= limit)
        .map(|i| (order[i], ops[i]))
        .collect();
    Err(Violation {
        gave_up,
        prefix: prefix.iter().map(|&i| order[i]).collect(),
        value,
        stuck,
    })
}

/// Looks at the operations outside `lin` that could come next: returns the earliest response
/// among them (no operation invoked after it can come next) and the lowest counter any of the
/// completed ones needs. `ops` are in invocation order, and an operation invoked after the
/// earliest response so far cannot respond earlier, so the scan stops there.
fn window(ops: &[Op], lin: &Bits) -> (u64, i64) {
    let mut bound = u64::MAX;
    let mut floor = i64::MAX;
    for (i, op) in ops.iter().enumerate().skip(lin.first_clear()) {
        if op.invoke > bound {
            break;
        }
        if !lin.contains(i) {
            bound = bound.min(op.response.unwrap_or(u64::MAX));
            if op.must_take_effect() {
                floor = floor.min(op.needs());
            }
        }
    }
    (bound, floor)
}
