//! Ten clients increment one key concurrently while the network reorders messages and a node
//! holding one of the key's replicas crashes: the final value is the number of committed
//! increments, every transaction gets decided, and the recorded history of increments and
//! reads is linearizable (checked by the search in `harness/linearizability.rs`, which has its
//! own tests at the end of this file).
//!
//! Each seed builds its own ring of 8 (more if one node holds so much of the ring that no key
//! has its four replicas on four nodes), runs the clients for 20 s of virtual time, crashes
//! one replica holder, runs them 20 s more, and then checks. A failing seed is a test case.

#![allow(clippy::unwrap_used)]

mod harness;
#[path = "harness/linearizability.rs"]
mod linearizability;

use std::time::{Duration, Instant};

use harness::Net;
use linearizability::{check, Kind, Op};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracker_overlay::tx::Abort;
use tracker_overlay::{TxOp, Value};

/// The seeds of the scenario: how the ring forms, how messages are delayed, which operations
/// the clients pick. Many, as the races they expose need particular timings.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=20;
const CLIENTS: usize = 10;
/// Virtual time the clients run before the crash, and again after it.
const HALF_RUN: Duration = Duration::from_secs(20);
/// The share of reads among the operations, in percent.
const READ_PERCENT: u32 = 20;

/// One operation as its client saw it.
struct Record {
    client: usize,
    increment: bool,
    /// Logical stamps (see [`Driver::stamp`]) and virtual times since the clients started.
    invoke: u64,
    invoked_at: Duration,
    response: Option<u64>,
    responded_at: Option<Duration>,
    outcome: Option<Result<i64, Abort>>,
}

struct Client {
    node: usize,
    /// The running transaction and its record.
    busy: Option<(u64, usize)>,
}

/// Runs the clients: each starts its next operation as soon as the last one finished.
struct Driver {
    key: String,
    clients: Vec<Client>,
    records: Vec<Record>,
    /// The logical clock of the history: every invocation and every observed response takes
    /// the next value, so a response observed before an invocation has the smaller stamp
    /// (virtual time alone cannot order events of the same instant).
    clock: u64,
    rng: StdRng,
    start: Instant,
    launching: bool,
}

impl Driver {
    fn stamp(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Collects the finished operations, then starts the next ones.
    fn step(&mut self, net: &mut Net) {
        for c in 0..self.clients.len() {
            let Some((req, r)) = self.clients[c].busy else {
                continue;
            };
            let Some(result) = net.take_tx(self.clients[c].node, req) else {
                continue;
            };
            let stamp = self.stamp();
            let record = &mut self.records[r];
            record.response = Some(stamp);
            record.responded_at = Some(net.now - self.start);
            record.outcome = Some(result.map(|mut values| counter(values.remove(0))));
            self.clients[c].busy = None;
        }
        if !self.launching {
            return;
        }
        for c in 0..self.clients.len() {
            if self.clients[c].busy.is_some() {
                continue;
            }
            let increment = self.rng.gen_range(0..100) >= READ_PERCENT;
            let op = if increment {
                TxOp::AddNumber(self.key.clone().into(), 1)
            } else {
                TxOp::Read(self.key.clone().into())
            };
            let invoke = self.stamp();
            let invoked_at = net.now - self.start;
            let req = net.transact(self.clients[c].node, vec![op]);
            self.clients[c].busy = Some((req, self.records.len()));
            self.records.push(Record {
                client: c,
                increment,
                invoke,
                invoked_at,
                response: None,
                responded_at: None,
                outcome: None,
            });
        }
    }

    /// Runs one operation for a client of its own on `node` while nothing else runs, and
    /// records it.
    fn run_alone(&mut self, net: &mut Net, node: usize, increment: bool) -> Result<i64, Abort> {
        let op = if increment {
            TxOp::AddNumber(self.key.clone().into(), 1)
        } else {
            TxOp::Read(self.key.clone().into())
        };
        let invoke = self.stamp();
        let invoked_at = net.now - self.start;
        let result = net
            .tx(node, vec![op])
            .map(|mut values| counter(values.remove(0)));
        let response = self.stamp();
        self.records.push(Record {
            client: self.clients.len(),
            increment,
            invoke,
            invoked_at,
            response: Some(response),
            responded_at: Some(net.now - self.start),
            outcome: Some(result.clone()),
        });
        result
    }

    fn idle(&self) -> bool {
        self.clients.iter().all(|c| c.busy.is_none())
    }
}

/// The counter's value as a read or an increment returned it (a key never written is 0).
fn counter(value: Option<Value>) -> i64 {
    match value {
        None => 0,
        Some(Value::Int(n)) => n,
        Some(other) => panic!("the counter holds {other:?}"),
    }
}

/// A ring of 8 (more if one node holds so much of the ring that no key has its four replicas
/// on four different nodes) and a key whose replicas do.
fn ring_and_key(net: &mut Net) -> (Vec<usize>, String) {
    let mut all = net.ring(8);
    loop {
        let spread = (0..1000).map(|k| format!("counter-{k}")).find(|key| {
            let mut holders = net.replica_holders(key);
            holders.sort();
            holders.dedup();
            holders.len() == 4
        });
        if let Some(key) = spread {
            return (all, key);
        }
        let via = all[0];
        all.push(net.join(via));
        net.settle();
    }
}

/// What one run counted.
#[derive(Debug)]
struct Tally {
    ops: usize,
    committed: usize,
    conflicts: usize,
    no_quorum: usize,
    unknown: usize,
    reads: usize,
    failed_reads: usize,
    /// What the read after the run returned, if it succeeded.
    final_value: Option<i64>,
    /// Live nodes with transactions still undecided after the run: their participants wait
    /// for an outcome, and hold their locks if they voted to commit.
    undecided: Vec<usize>,
    /// The increment after the run, with the network quiet.
    last_increment: Result<i64, Abort>,
    /// Why the whole history is not linearizable, if it is not.
    violation: Option<String>,
}

fn run(seed: u64) -> Tally {
    let mut net = Net::new(seed);
    // Wider than the default: more messages overtake each other.
    net.delay = (Duration::from_millis(1), Duration::from_millis(40));
    let (all, key) = ring_and_key(&mut net);
    let holders = net.replica_holders(&key);
    // The node to crash holds one replica, so three remain: a majority, but only just (every
    // commit after the crash needs all three). Every other node runs clients.
    let victim = holders[1];
    let nodes: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    let mut driver = Driver {
        key: key.clone(),
        clients: (0..CLIENTS)
            .map(|c| Client {
                node: nodes[c % nodes.len()],
                busy: None,
            })
            .collect(),
        records: Vec::new(),
        clock: 0,
        rng: StdRng::seed_from_u64(seed),
        start: net.now,
        launching: true,
    };

    net.run_until(HALF_RUN, |net| {
        driver.step(net);
        false
    });
    assert!(
        !driver.idle(),
        "seed {seed}: the crash should hit work in flight"
    );
    net.crash(victim);
    net.run_until(HALF_RUN, |net| {
        driver.step(net);
        false
    });
    driver.launching = false;
    // Every transaction ends by its timeout at the latest.
    let idle = net.run_until(Duration::from_secs(60), |net| {
        driver.step(net);
        driver.idle()
    });
    assert!(idle, "seed {seed}: some transactions never finished");

    // Long enough for every replica to hear every outcome, for replicated managers to decide
    // what their managers left open, and for the ring to route around the crash. (Not
    // `settle`: with 8 random ids the crashed node may have held two replicas of some other
    // keys, which then can never be recovered, and its successor stays unsure of that part for
    // good.)
    net.run_for(Duration::from_secs(20));
    // Every transaction must be decided by now (the participants of one that is not keep their
    // locks), and the key must take an increment again; then the result is read. Both join the
    // history.
    let undecided: Vec<usize> = net
        .alive()
        .into_iter()
        .filter(|&i| net.hosts[i].node.pending() > 0)
        .collect();
    let reader = nodes[0];
    let mut last_increment = driver.run_alone(&mut net, reader, true);
    for _ in 0..2 {
        if !matches!(last_increment, Err(Abort::Conflict { .. })) {
            break;
        }
        last_increment = driver.run_alone(&mut net, reader, true);
    }
    let mut final_value = None;
    for _ in 0..3 {
        if let Ok(v) = driver.run_alone(&mut net, reader, false) {
            final_value = Some(v);
            break;
        }
    }

    let mut tally = Tally {
        ops: driver.records.len(),
        final_value,
        committed: 0,
        conflicts: 0,
        no_quorum: 0,
        unknown: 0,
        reads: 0,
        failed_reads: 0,
        undecided,
        last_increment,
        violation: None,
    };
    let mut history = Vec::new();
    for r in &driver.records {
        let outcome = r.outcome.clone().unwrap();
        let kind = match (r.increment, outcome) {
            (true, Ok(v)) => {
                tally.committed += 1;
                Some(Kind::Increment(v))
            }
            (true, Err(Abort::Timeout)) => {
                tally.unknown += 1;
                Some(Kind::IncrementUnknown)
            }
            // Both end before anything is applied: a conflict by the commit's abort decision,
            // a missing quorum in the read phase.
            (true, Err(Abort::Conflict { .. })) => {
                tally.conflicts += 1;
                None
            }
            (true, Err(Abort::NoQuorum { .. })) => {
                tally.no_quorum += 1;
                None
            }
            (false, Ok(v)) => {
                tally.reads += 1;
                Some(Kind::Read(v))
            }
            // A read changes nothing, whatever it ended with.
            (false, Err(Abort::NoQuorum { .. } | Abort::Conflict { .. } | Abort::Timeout)) => {
                tally.failed_reads += 1;
                None
            }
            (_, Err(e)) => panic!(
                "seed {seed}: client {} at {:?}: unexpected {e:?}",
                r.client, r.invoked_at
            ),
        };
        if let Some(kind) = kind {
            let response = match kind {
                Kind::IncrementUnknown => None,
                _ => r.response,
            };
            history.push(Op {
                invoke: r.invoke,
                response,
                kind,
            });
        }
    }
    tally.violation = check(&history).err().map(|violation| {
        let increments: Vec<Op> = history
            .iter()
            .copied()
            .filter(|op| !matches!(op.kind, Kind::Read(_)))
            .collect();
        let alone = match check(&increments) {
            Ok(()) => "linearizable".to_string(),
            Err(v) => v.to_string(),
        };
        let stuck: Vec<u64> = violation.stuck.iter().map(|(_, op)| op.invoke).collect();
        format!(
            "{violation}\nthe increments alone: {alone}\naround the stuck operations:\n{}",
            context(&driver.records, &stuck).join("\n")
        )
    });
    tally
}

/// The operations that did not abort from shortly before the first of the records invoked at
/// `stamps` to the last response among them, for failure messages.
fn context(records: &[Record], stamps: &[u64]) -> Vec<String> {
    let stuck: Vec<&Record> = records
        .iter()
        .filter(|r| stamps.contains(&r.invoke))
        .collect();
    let Some(from) = stuck.iter().map(|r| r.invoked_at).min() else {
        return Vec::new();
    };
    let from = from.saturating_sub(Duration::from_millis(300));
    let to = stuck
        .iter()
        .map(|r| r.responded_at.unwrap_or(Duration::MAX))
        .max()
        .unwrap_or(Duration::MAX);
    records
        .iter()
        .filter(|r| matches!(r.outcome, Some(Ok(_)) | Some(Err(Abort::Timeout))))
        .filter(|r| r.invoked_at <= to && r.responded_at.is_none_or(|t| t >= from))
        .map(|r| {
            format!(
                "  {} client {:>2} {:<9} {:>9.3?} .. {:>9.3?} -> {:?}",
                if stamps.contains(&r.invoke) { "*" } else { " " },
                r.client,
                if r.increment { "increment" } else { "read" },
                r.invoked_at,
                r.responded_at.unwrap_or_default(),
                r.outcome.as_ref().unwrap()
            )
        })
        .collect()
}

#[test]
fn ten_clients_increment_one_key_through_reordering_and_a_crash() {
    let tallies: Vec<(u64, Tally)> = SEEDS.map(|seed| (seed, run(seed))).collect();
    for (seed, t) in &tallies {
        println!(
            "seed {seed}: {} ops, {} committed, {} conflicts, {} no quorum, {} unknown, {} reads \
             ({} failed), final {:?}; afterwards undecided on {:?}, increment {:?}; \
             linearizable: {}",
            t.ops,
            t.committed,
            t.conflicts,
            t.no_quorum,
            t.unknown,
            t.reads,
            t.failed_reads,
            t.final_value,
            t.undecided,
            t.last_increment,
            t.violation.is_none()
        );
    }
    for (seed, t) in &tallies {
        let Some(value) = t.final_value else {
            panic!("seed {seed}: the final read kept failing");
        };
        let (committed, unknown) = (t.committed as i64, t.unknown as i64);
        if unknown == 0 {
            assert_eq!(
                value, committed,
                "seed {seed}: the final value is not the number of committed increments"
            );
        } else {
            assert!(
                (committed..=committed + unknown).contains(&value),
                "seed {seed}: final {value} with {committed} committed and {unknown} unknown"
            );
        }
        assert!(t.committed >= 30, "seed {seed}: too few commits");
        assert!(t.conflicts > 0, "seed {seed}: no contention");
        assert!(t.reads > 0, "seed {seed}: no reads");
    }
    for (seed, t) in &tallies {
        assert!(
            t.undecided.is_empty() && t.last_increment.is_ok(),
            "seed {seed}: transactions stay undecided on {:?} long after the crash, and an \
             increment on a quiet network ended {:?}",
            t.undecided,
            t.last_increment
        );
    }
    for (seed, t) in &tallies {
        if let Some(e) = &t.violation {
            panic!("seed {seed}: {e}");
        }
    }
}

// The checker itself.

fn inc(invoke: u64, response: u64, v: i64) -> Op {
    Op {
        invoke,
        response: Some(response),
        kind: Kind::Increment(v),
    }
}

fn read(invoke: u64, response: u64, v: i64) -> Op {
    Op {
        invoke,
        response: Some(response),
        kind: Kind::Read(v),
    }
}

fn unknown(invoke: u64) -> Op {
    Op {
        invoke,
        response: None,
        kind: Kind::IncrementUnknown,
    }
}

#[test]
fn checker_accepts_concurrent_operations_in_any_consistent_order() {
    // Two overlapping increments that returned 2 and 1 (the later-invoked one went first),
    // a read overlapping both that saw 1, then a read after them that sees 2.
    let history = [inc(1, 6, 2), inc(2, 5, 1), read(3, 7, 1), read(8, 9, 2)];
    assert!(check(&history).is_ok());
    assert!(check(&[]).is_ok());
    // The first invoked is not the first linearized: the search has to back out of it.
    assert!(check(&[inc(1, 10, 1), read(2, 3, 0), read(4, 5, 0)]).is_ok());
}

/// A random history of `clients` clients that is linearizable by construction: each step moves
/// one client on, from idle to invoked, to the operation's effect on the counter (its
/// linearization point), to the response. Some increments end unknown, of which some never
/// took effect.
fn linearizable_history(seed: u64, clients: usize, steps: usize) -> Vec<Op> {
    #[derive(Clone, Copy)]
    enum Stage {
        Idle,
        Invoked(u64, bool),
        Applied(u64, Kind),
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stages = vec![Stage::Idle; clients];
    let mut counter = 0;
    let mut history = Vec::new();
    for t in 1..=steps as u64 {
        let c = rng.gen_range(0..clients);
        stages[c] = match stages[c] {
            Stage::Idle => Stage::Invoked(t, rng.gen_bool(0.7)),
            Stage::Invoked(invoke, true) if rng.gen_bool(0.05) => {
                // Gave up before the increment took effect.
                history.push(unknown(invoke));
                Stage::Idle
            }
            Stage::Invoked(invoke, true) => {
                counter += 1;
                Stage::Applied(invoke, Kind::Increment(counter))
            }
            Stage::Invoked(invoke, false) => Stage::Applied(invoke, Kind::Read(counter)),
            Stage::Applied(invoke, kind) => {
                let lost = matches!(kind, Kind::Increment(_)) && rng.gen_bool(0.05);
                history.push(if lost {
                    unknown(invoke)
                } else {
                    Op {
                        invoke,
                        response: Some(t),
                        kind,
                    }
                });
                Stage::Idle
            }
        };
    }
    history
}

#[test]
fn checker_accepts_long_random_linearizable_histories_and_catches_a_duplicate() {
    for seed in 0..5 {
        let mut history = linearizable_history(seed, CLIENTS, 10_000);
        assert!(history.len() > 2000);
        assert!(check(&history).is_ok(), "seed {seed}");
        // Two increments that returned the same value.
        let incs: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].kind, Kind::Increment(_)))
            .collect();
        let (a, b) = (incs[incs.len() / 2], incs[incs.len() / 2 + 1]);
        history[b].kind = history[a].kind;
        let violation = check(&history).unwrap_err();
        assert!(!violation.gave_up, "seed {seed}");
        // A read after everything that saw nothing: only found at the very end, so the search
        // has to back out of the whole history.
        history[b].kind = Kind::Increment(0);
        history.retain(|op| op.kind != Kind::Increment(0));
        history.push(read(10_001, 10_002, 0));
        let violation = check(&history).unwrap_err();
        assert!(!violation.gave_up, "seed {seed}");
    }
}

/// Whether `history` can be linearized, by trying every order (for a few operations).
fn linearizable_by_brute_force(history: &[Op], taken: &mut Vec<bool>, value: i64) -> bool {
    if (0..history.len()).all(|i| taken[i] || history[i].response.is_none()) {
        return true;
    }
    for i in 0..history.len() {
        if taken[i] {
            continue;
        }
        let preceded = (0..history.len())
            .filter(|&j| !taken[j] && j != i)
            .any(|j| history[j].response.is_some_and(|r| r < history[i].invoke));
        let next = match history[i].kind {
            Kind::Increment(v) => (v == value + 1).then_some(v),
            Kind::IncrementUnknown => Some(value + 1),
            Kind::Read(v) => (v == value).then_some(v),
        };
        let Some(next) = next.filter(|_| !preceded) else {
            continue;
        };
        taken[i] = true;
        let ok = linearizable_by_brute_force(history, taken, next);
        taken[i] = false;
        if ok {
            return true;
        }
    }
    false
}

#[test]
fn checker_agrees_with_brute_force_on_small_random_histories() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut verdicts = [0; 2];
    for _ in 0..20_000 {
        let n = rng.gen_range(1..=7);
        let history: Vec<Op> = (0..n)
            .map(|_| {
                let invoke = rng.gen_range(0..20);
                let response = Some(invoke + rng.gen_range(1..10));
                match rng.gen_range(0..5) {
                    0 => unknown(invoke),
                    1 | 2 => Op {
                        invoke,
                        response,
                        kind: Kind::Increment(rng.gen_range(1..4)),
                    },
                    _ => Op {
                        invoke,
                        response,
                        kind: Kind::Read(rng.gen_range(0..4)),
                    },
                }
            })
            .collect();
        let expected = linearizable_by_brute_force(&history, &mut vec![false; n], 0);
        assert_eq!(check(&history).is_ok(), expected, "{history:?}");
        verdicts[usize::from(expected)] += 1;
    }
    // Both verdicts occur often enough for the comparison to mean something.
    assert!(verdicts.iter().all(|&v| v > 2000), "{verdicts:?}");
}

#[test]
fn checker_rejects_a_stale_read_after_a_completed_increment() {
    let history = [inc(1, 2, 1), inc(3, 4, 2), read(5, 6, 1)];
    let violation = check(&history).unwrap_err();
    assert_eq!(violation.prefix, vec![0, 1]);
    assert_eq!(violation.stuck, vec![(2, history[2])]);
    // The same read overlapping the second increment is fine.
    assert!(check(&[inc(1, 2, 1), inc(3, 6, 2), read(4, 5, 1)]).is_ok());
}

#[test]
fn checker_rejects_two_increments_that_returned_the_same_value() {
    assert!(check(&[inc(1, 4, 1), inc(2, 3, 1)]).is_err());
    assert!(check(&[inc(1, 2, 1), inc(3, 4, 1)]).is_err());
}

#[test]
fn checker_lets_an_unknown_increment_take_effect_once_or_never() {
    // Never: the later read still sees 1.
    assert!(check(&[inc(1, 2, 1), unknown(3), read(5, 6, 1)]).is_ok());
    // Later than its invocation, even after other operations completed.
    assert!(check(&[unknown(1), read(2, 3, 0), inc(4, 5, 2), read(6, 7, 2)]).is_ok());
    // But not before it was invoked, and only once.
    assert!(check(&[read(1, 2, 1), unknown(3)]).is_err());
    assert!(check(&[unknown(1), read(2, 3, 2)]).is_err());
    // A value nobody could have produced.
    assert!(check(&[inc(1, 2, 1), read(3, 4, 3)]).is_err());
}
