//! Which of a call's event sources woke its task.
//!
//! A call's owner task waits on up to nine sources (the two sockets, the shutdown token, tool
//! results, timers…). Polled together, as `select!` does, every wake-up polls all of them, and
//! at 50 caller frames a second per call the polls of sources that had nothing to say cost more
//! than the frames. Here each source is polled with its own waker, which records a bit and
//! wakes the task; the task then polls only the sources whose bit is set (the technique
//! `FuturesUnordered` uses).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

struct Shared {
    fired: AtomicU32,
    task: AtomicWaker,
}

struct Source {
    shared: Arc<Shared>,
    bit: u32,
}

impl Wake for Source {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only the first source to fire since the last take wakes the task: with bits already
        // set, a wake is already on its way and the take will see this bit too.
        if self.shared.fired.fetch_or(self.bit, Ordering::AcqRel) == 0 {
            self.shared.task.wake();
        }
    }
}

/// One waker per source (bit `1 << i`), all waking the task that last called [`Self::take`].
pub struct Wakeups {
    shared: Arc<Shared>,
    wakers: Vec<Waker>,
}

impl Wakeups {
    /// `n` sources (at most 32). None has fired yet.
    pub fn new(n: usize) -> Self {
        assert!(n <= 32, "at most 32 sources");
        let shared = Arc::new(Shared { fired: AtomicU32::new(0), task: AtomicWaker::new() });
        let wakers =
            (0..n).map(|i| Waker::from(Arc::new(Source { shared: Arc::clone(&shared), bit: 1 << i }))).collect();
        Self { shared, wakers }
    }

    /// Registers the task's waker, then takes the sources that fired since the last take.
    /// (In this order: a source that fires after the take wakes the registered task.)
    pub fn take(&self, cx: &Context<'_>) -> u32 {
        self.shared.task.register(cx.waker());
        self.take_fired()
    }

    /// Takes the sources that fired since the last take, without registering.
    pub fn take_fired(&self) -> u32 {
        self.shared.fired.swap(0, Ordering::AcqRel)
    }

    /// The waker to poll source `i` with.
    pub fn waker(&self, i: usize) -> &Waker {
        &self.wakers[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_source_sets_its_bit_and_wakes_the_registered_task() {
        let w = Wakeups::new(3);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(Arc::clone(&count));
        let cx = Context::from_waker(&task);
        assert_eq!(w.take(&cx), 0);
        w.waker(2).wake_by_ref();
        w.waker(0).wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for both: the second finds a bit set");
        assert_eq!(w.take(&cx), 0b101);
        assert_eq!(w.take(&cx), 0, "taking clears the bits");
        let owned = w.waker(1).clone();
        owned.wake(); // the by-value path, as a dropped-and-woken clone inside tokio takes it
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(w.take_fired(), 0b010);
    }

    #[test]
    fn a_wake_before_any_registration_is_kept() {
        let w = Wakeups::new(2);
        w.waker(1).wake_by_ref();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(Arc::clone(&count));
        assert_eq!(w.take(&Context::from_waker(&task)), 0b10);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_same_waker_is_handed_out_for_a_source() {
        let w = Wakeups::new(2);
        assert!(w.waker(0).will_wake(w.waker(0)));
        assert!(!w.waker(0).will_wake(w.waker(1)));
    }
}
