//! Per-key token buckets (the Profile API limits requests per token).
//!
//! Contract: each key has a bucket of `burst` tokens refilled at `rate` per second; a
//! request takes one token or is refused with the whole seconds (≥ 1) until one is back.
//! Keys are token names from the configuration, so the map stays as small as the config.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_sec` requests per second, with a burst of one second's worth (at least 1).
    pub fn new(per_sec: u32) -> RateLimiter {
        let rate = f64::from(per_sec.max(1));
        RateLimiter {
            rate,
            burst: rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; `Err(seconds to wait)` when the bucket is empty.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = match buckets.get_mut(key) {
            Some(b) => b,
            None => buckets.entry(key.to_string()).or_insert(Bucket {
                tokens: self.burst,
                at: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err((wait.ceil() as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate_per_key() {
        let l = RateLimiter::new(10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(l.check_at("a", t0), Ok(()));
        }
        assert_eq!(l.check_at("a", t0), Err(1));
        assert_eq!(l.check_at("b", t0), Ok(()), "keys are independent");
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(l.check_at("a", t1), Ok(()));
        assert_eq!(l.check_at("a", t1), Ok(()));
        assert_eq!(l.check_at("a", t1), Err(1));
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(l.check_at("a", t2), Ok(()), "refill stops at the burst");
        }
        assert!(l.check_at("a", t2).is_err());
    }

    #[test]
    fn slow_rates_ask_for_longer_waits() {
        let l = RateLimiter::new(1);
        let t0 = Instant::now();
        assert_eq!(l.check_at("a", t0), Ok(()));
        assert_eq!(l.check_at("a", t0), Err(1));
        assert_eq!(l.check_at("a", t0 + Duration::from_millis(1000)), Ok(()));
    }
}
