//! Reconnect delays: exponential from 100 ms to 10 s, each drawn from the
//! upper half of its step so a fleet that lost Redis together does not
//! reconnect together.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
/// Long enough that hundreds of sidecars retrying cost Redis little, short
/// enough that an outage ends for pollgate within seconds of Redis's return.
const MAX: Duration = Duration::from_secs(10);

pub struct Backoff {
    step: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff {
            step: FIRST,
            rng: fastrand::Rng::new(),
        }
    }

    /// The next wait, in `[step/2, step)`; the step then doubles up to [`MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let half = self.step.as_millis() as u64 / 2;
        let d = Duration::from_millis(half + self.rng.u64(0..half.max(1)));
        self.step = (self.step * 2).min(MAX);
        d
    }

    /// After a connection worked: the next failure starts over at 100 ms.
    pub fn reset(&mut self) {
        self.step = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!((50..100).contains(&first.as_millis()), "{first:?}");
        let later: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(later.iter().all(|d| *d < MAX));
        assert!(later[15..].iter().all(|d| *d >= MAX / 2), "{later:?}");
        b.reset();
        assert!(b.next_delay() < FIRST);
    }
}
