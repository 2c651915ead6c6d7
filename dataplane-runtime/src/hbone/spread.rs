//! Spreading accepted HBONE connections evenly over the workers of one process.
//!
//! A dataplane with several workers gives each its own runtime and its own listener in an
//! `SO_REUSEPORT` group, and the kernel's hash of the client's address and port picks the
//! worker that accepts. That suits many short connections. HBONE connections are few and
//! long-lived (one per peer proxy worker) and carry all the traffic between two pods: with
//! two workers and two client connections, the hash puts both on one worker half of the
//! time, and that worker does all the work while the other idles.
//!
//! With a [`Spread`], the worker that accepts a connection hands it to the worker serving
//! the fewest HBONE connections (itself on a tie), which adopts the socket into its own
//! runtime. Envoy's listeners offer the same as the `exact_balance` connection balancer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// A connection handed from the worker that accepted it to the one that serves it.
pub(super) struct Handed {
    pub(super) tcp: std::net::TcpStream,
    pub(super) addr: SocketAddr,
    pub(super) tally: Tally,
}

struct Worker {
    /// HBONE connections this worker serves, or is being handed.
    open: AtomicUsize,
    handoff: mpsc::UnboundedSender<Handed>,
}

/// The HBONE connection counts of a process's workers, shared by all of them.
#[derive(Clone)]
pub struct Spread {
    workers: Arc<[Worker]>,
}

impl Spread {
    /// A spread over `workers` workers (at least one); each gets one of the returned members,
    /// in order, to pass to [`HboneServer::serve_spread`](super::HboneServer::serve_spread).
    pub fn new(workers: usize) -> (Spread, Vec<SpreadMember>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let spread = Spread {
            workers: senders
                .into_iter()
                .map(|handoff| Worker {
                    open: AtomicUsize::new(0),
                    handoff,
                })
                .collect(),
        };
        let members = receivers
            .into_iter()
            .enumerate()
            .map(|(index, handed)| SpreadMember {
                spread: spread.clone(),
                index,
                handed,
            })
            .collect();
        (spread, members)
    }

    /// HBONE connections each worker serves, by worker index.
    pub fn open(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.open.load(Ordering::Acquire))
            .collect()
    }
}

impl std::fmt::Debug for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spread")
            .field("open", &self.open())
            .finish()
    }
}

/// One worker's place in a [`Spread`]: where the connections handed to it arrive.
#[derive(Debug)]
pub struct SpreadMember {
    spread: Spread,
    index: usize,
    handed: mpsc::UnboundedReceiver<Handed>,
}

impl SpreadMember {
    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The worker that should serve a connection this worker just accepted (the one with the
    /// fewest connections; this one on a tie), already counted there.
    pub(super) fn place(&self) -> (usize, Tally) {
        let workers = &self.spread.workers;
        let own = workers[self.index].open.load(Ordering::Acquire);
        let (to, _) = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i, w.open.load(Ordering::Acquire)))
            .fold((self.index, own), |best, (i, open)| {
                if open < best.1 { (i, open) } else { best }
            });
        (to, self.count(to))
    }

    /// Counts a connection on worker `index` until the returned guard is dropped.
    pub(super) fn count(&self, index: usize) -> Tally {
        let workers = self.spread.workers.clone();
        workers[index].open.fetch_add(1, Ordering::AcqRel);
        Tally { workers, index }
    }

    /// Sends a connection to worker `to`; gives it back if that worker has stopped.
    pub(super) fn hand(&self, to: usize, handed: Handed) -> Result<(), Handed> {
        self.spread.workers[to]
            .handoff
            .send(handed)
            .map_err(|returned| returned.0)
    }

    /// The next connection another worker handed to this one.
    pub(super) async fn handed(&mut self) -> Option<Handed> {
        self.handed.recv().await
    }
}

/// A connection counted on one worker while it lives.
#[derive(Debug)]
pub(super) struct Tally {
    workers: Arc<[Worker]>,
    index: usize,
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.workers[self.index].open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("open", &self.open.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}
