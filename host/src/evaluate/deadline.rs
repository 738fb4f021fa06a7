//! The deadline of one call, counted in the time the policy itself runs:
//! never the time its thread waited for a CPU, nor the time its task
//! waited for a worker between two slices of a yielding call.
//!
//! The epoch ticker interrupts the guest at every tick it runs across; at
//! each interruption the [`Meter`] adds the time run since the last one,
//! read from the thread's CPU clock (which stops while the thread waits to
//! be scheduled), and interrupts the call once the sum reaches the
//! deadline. That clock costs a system call (about half a microsecond, a
//! tenth of a whole decision), so a call that finishes before its first
//! tick, which is every ordinary decision, never reads it: until the first
//! reading of a slice, the time run is bounded by the slice's own wall
//! time, and by one tick. A call is therefore charged at most one tick
//! more than it ran, and waiting never counts.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

use super::sandbox::StoreState;

/// The running time of one call, shared by its store's epoch callback and
/// the future that polls an async call.
#[derive(Clone)]
pub(crate) struct Meter(Arc<Mutex<Metered>>);

struct Metered {
    deadline: Duration,
    tick: Duration,
    /// Time run in the slices measured so far.
    used: Duration,
    /// The slice in progress: a poll of an async call, or the whole of a
    /// synchronous one.
    slice: u64,
    slice_start: Instant,
    /// The thread CPU clock at the last reading, in the slice it was read.
    mark: Option<(u64, Duration)>,
    /// Whether the call has run across a tick; only then is the CPU clock
    /// worth reading at the start of a slice.
    long: bool,
}

impl Meter {
    /// A meter for a call allowed `deadline` of running time, with epochs
    /// `tick` apart; its first slice starts now.
    pub(crate) fn new(deadline: Duration, tick: Duration) -> Self {
        Meter(Arc::new(Mutex::new(Metered {
            deadline,
            tick,
            used: Duration::ZERO,
            slice: 0,
            slice_start: Instant::now(),
            mark: None,
            long: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Metered> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new slice of the call begins on this thread (an async call was
    /// polled again).
    pub(crate) fn resume(&self) {
        let mut m = self.lock();
        m.slice += 1;
        m.slice_start = Instant::now();
        m.mark = if m.long {
            thread_cpu().map(|cpu| (m.slice, cpu))
        } else {
            None
        };
    }

    /// At an epoch tick the call ran across: adds the time run since the
    /// last reading; true once the deadline is reached.
    fn ticked(&self) -> bool {
        let mut m = self.lock();
        m.long = true;
        let cpu = thread_cpu();
        let ran = match (m.mark, cpu) {
            (Some((slice, mark)), Some(now)) if slice == m.slice => now.saturating_sub(mark),
            // Until the first reading of a slice the guest ran for at most
            // the slice's wall time, and for at most one tick: the epoch
            // passed its mark within a tick of the slice starting.
            _ => m.slice_start.elapsed().min(m.tick),
        };
        m.used = m.used.saturating_add(ran);
        m.mark = cpu.map(|now| (m.slice, now));
        m.used >= m.deadline
    }

    /// The running time charged so far.
    #[cfg(test)]
    fn used(&self) -> Duration {
        self.lock().used
    }
}

/// Arms `store` with `meter`: an interruption at every tick the guest runs
/// across, a trap once the meter reaches its deadline, and otherwise a
/// yield to the executor when `yielding`, so a long policy shares its
/// thread with other requests.
pub(crate) fn arm(store: &mut Store<StoreState>, meter: Meter, yielding: bool) {
    store.epoch_deadline_callback(move |_| {
        Ok(if meter.ticked() {
            UpdateDeadline::Interrupt
        } else if yielding {
            UpdateDeadline::Yield(1)
        } else {
            UpdateDeadline::Continue(1)
        })
    });
    store.set_epoch_deadline(1);
}

/// Polls `future`, a call armed with `meter`, counting each poll as a
/// slice of it.
pub(crate) async fn sliced<F: Future>(meter: &Meter, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        meter.resume();
        future.as_mut().poll(cx)
    })
    .await
}

/// The CPU time this thread has used, or `None` where the clock is
/// unavailable (then each tick is charged whole, as wall time).
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call, and CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let start = thread_cpu().expect("clock");
        while thread_cpu().expect("clock") - start < d {}
    }

    #[test]
    fn sleeping_between_ticks_is_not_charged() {
        let meter = Meter::new(Duration::from_millis(50), Duration::from_millis(1));
        // A slice that waited 30 ms before its first tick is charged one
        // tick at most; later ticks in the slice are charged CPU time.
        std::thread::sleep(Duration::from_millis(30));
        assert!(!meter.ticked());
        assert!(meter.used() <= Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!meter.ticked());
        assert!(
            meter.used() < Duration::from_millis(5),
            "{:?}",
            meter.used()
        );
    }

    #[test]
    fn running_is_charged_until_the_deadline() {
        let meter = Meter::new(Duration::from_millis(20), Duration::from_millis(1));
        assert!(!meter.ticked());
        spin(Duration::from_millis(10));
        assert!(!meter.ticked());
        spin(Duration::from_millis(11));
        assert!(meter.ticked());
    }

    #[test]
    fn a_new_slice_reads_the_clock_once_the_call_is_long() {
        let meter = Meter::new(Duration::from_millis(20), Duration::from_millis(1));
        assert!(!meter.ticked());
        // Waiting between slices (a yield) is not charged at all.
        std::thread::sleep(Duration::from_millis(30));
        meter.resume();
        spin(Duration::from_millis(5));
        assert!(!meter.ticked());
        let used = meter.used();
        assert!(
            used >= Duration::from_millis(5) && used < Duration::from_millis(10),
            "{used:?}"
        );
    }
}
