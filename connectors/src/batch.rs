//! Blocking work (on local files), gathered into batches: requests made side by side queue,
//! and one blocking thread runs every request queued so far in one go, then the next
//! ones, until the queue is empty (a group commit). A batch costs one hand-off to a
//! blocking thread, not one per request, and lets the work be shared (one `syncfs` for
//! many files' syncs).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Work that runs many requests in one blocking call.
pub trait Batch: Send + Sync + 'static {
    /// One request.
    type Op: Send + 'static;
    /// Its answer.
    type Out: Send + 'static;
    /// Runs `ops`, blocking; one answer per request, in their order.
    fn run(&self, ops: Vec<Self::Op>) -> Vec<Self::Out>;

    /// Runs `ops` and answers each (by default: all of them once [`Self::run`] returns;
    /// work whose requests are independent answers each as soon as it is done).
    fn run_and_answer(&self, ops: Queue<Self>)
    where
        Self: Sized,
    {
        let (ops, replies): (Vec<_>, Vec<_>) = ops.into_iter().unzip();
        let outs = self.run(ops);
        debug_assert_eq!(outs.len(), replies.len());
        for (reply, out) in replies.into_iter().zip(outs) {
            // A requester that went away (its job was dropped) needs no answer.
            let _ = reply.send(out);
        }
    }
}

/// Most requests one batch takes (the rest wait for the next one, run at once after it).
pub const MAX_BATCH: usize = 512;

/// Requests to a [`Batch`], run by one blocking thread at a time (or a few: see
/// [`Batcher::with_threads`]).
pub struct Batcher<B: Batch> {
    shared: Arc<Shared<B>>,
}

struct Shared<B: Batch> {
    batch: B,
    /// Most threads running batches at once, and most requests a batch takes.
    threads: usize,
    max_batch: usize,
    state: Mutex<State<B>>,
}

/// Requests waiting, each with where its answer goes.
pub type Queue<B> = Vec<(<B as Batch>::Op, oneshot::Sender<<B as Batch>::Out>)>;

struct State<B: Batch> {
    queue: Queue<B>,
    /// Blocking threads running batches.
    running: usize,
}

impl<B: Batch> std::fmt::Debug for Batcher<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<B: Batch> Batcher<B> {
    /// Batches of `batch`, one thread at a time, up to [`MAX_BATCH`] requests each.
    pub fn new(batch: B) -> Self {
        Self::with_threads(batch, 1, MAX_BATCH)
    }

    /// Batches of `batch` run by up to `threads` threads at once, `max_batch` requests
    /// at most each (so that a slow request holds up few others).
    pub fn with_threads(batch: B, threads: usize, max_batch: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                batch,
                threads: threads.max(1),
                max_batch: max_batch.max(1),
                state: Mutex::new(State {
                    queue: Vec::new(),
                    running: 0,
                }),
            }),
        }
    }

    /// The work itself (for what it holds).
    #[cfg(test)]
    pub fn batch(&self) -> &B {
        &self.shared.batch
    }

    /// Runs `op` in the next batch and returns its answer. A panic in the batch is
    /// raised here, in every request of that batch.
    pub async fn run(&self, op: B::Op) -> B::Out {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.shared.state.lock().expect("batch lock");
            state.queue.push((op, tx));
            // Another thread when every running one has a batch's worth waiting.
            let wanted = state.running == 0
                || (state.running < self.shared.threads
                    && state.queue.len() > state.running * self.shared.max_batch / 2);
            if wanted {
                state.running += 1;
            }
            wanted
        };
        if start {
            let shared = self.shared.clone();
            // Not awaited: the thread answers every request through its channel.
            drop(tokio::task::spawn_blocking(move || drain(shared)));
        }
        match rx.await {
            Ok(out) => out,
            Err(_) => panic!("a batch of blocking work panicked"),
        }
    }
}

/// Runs batches until the queue is empty, then lets the next request start a thread.
fn drain<B: Batch>(shared: Arc<Shared<B>>) {
    /// When a batch panics: another thread takes over the requests queued meanwhile.
    struct Running<B: Batch>(Arc<Shared<B>>);
    impl<B: Batch> Drop for Running<B> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let shared = self.0.clone();
                drop(tokio::task::spawn_blocking(move || drain(shared)));
            }
        }
    }
    let running = Running(shared);
    let shared = &running.0;
    loop {
        let taken: Queue<B> = {
            let mut state = shared.state.lock().expect("batch lock");
            if state.queue.is_empty() {
                state.running -= 1;
                return;
            }
            let n = state.queue.len().min(shared.max_batch);
            state.queue.drain(..n).collect()
        };
        shared.batch.run_and_answer(taken);
    }
}

/// A blocking closure's answer, of whatever type it has.
pub type Answer = Box<dyn std::any::Any + Send>;

/// Blocking closures as a [`Batch`]: the hand-off to a blocking thread shared by every
/// closure queued meanwhile, each answered as soon as it has run.
#[derive(Debug, Default)]
pub struct Closures;

impl Batch for Closures {
    type Op = Box<dyn FnOnce() -> Answer + Send>;
    type Out = Answer;

    fn run(&self, ops: Vec<Self::Op>) -> Vec<Answer> {
        ops.into_iter().map(|f| f()).collect()
    }

    fn run_and_answer(&self, ops: Queue<Self>) {
        for (f, reply) in ops {
            let _ = reply.send(f());
        }
    }
}

impl Batcher<Closures> {
    /// Runs `f` on one of the pool's blocking threads, with the closures queued beside it.
    pub async fn call<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let answer = self.run(Box::new(move || Box::new(f()) as Answer)).await;
        *answer
            .downcast::<T>()
            .expect("a closure's answer has the closure's type")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Doubles numbers, counting its batches; panics on 13.
    #[derive(Default)]
    struct Double {
        batches: AtomicUsize,
    }

    impl Batch for Double {
        type Op = u32;
        type Out = u32;
        fn run(&self, ops: Vec<u32>) -> Vec<u32> {
            self.batches.fetch_add(1, Ordering::Relaxed);
            // Long enough for the requests behind the first to queue.
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!ops.contains(&13), "unlucky");
            ops.into_iter().map(|n| n * 2).collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_side_by_side_share_batches_and_each_gets_its_own_answer() {
        let b = Arc::new(Batcher::new(Double::default()));
        let tasks: Vec<_> = (100..1100u32)
            .map(|n| {
                let b = b.clone();
                tokio::spawn(async move { (n, b.run(n).await) })
            })
            .collect();
        for t in tasks {
            let (n, out) = t.await.unwrap();
            assert_eq!(out, n * 2);
        }
        let batches = b.batch().batches.load(Ordering::Relaxed);
        // 1,000 requests at 512 at most a batch: at least two batches, far fewer than 1,000.
        assert!((2..=50).contains(&batches), "{batches} batches");
        // Idle again: the next request starts a thread of its own.
        assert_eq!(b.run(7).await, 14);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_batch_fails_its_requests_and_the_next_ones_run() {
        let b = Arc::new(Batcher::new(Double::default()));
        let bad = {
            let b = b.clone();
            tokio::spawn(async move { b.run(13).await })
        };
        assert!(bad.await.unwrap_err().is_panic());
        assert_eq!(b.run(4).await, 8);
    }
}
