//! Zipf-distributed ranks in `1..=n` with exponent `s`, in O(1) time and memory per sample.
//!
//! Contract: rejection-inversion sampling (Hörmann & Derflinger, 1996, as in Apache Commons
//! RNG's `RejectionInversionZipfSampler`), using only [`crate::detmath`] so that a seed gives the
//! same ranks on every machine. `P(k) ∝ k^-s`; rank 1 is the hottest.

use crate::detmath::{exp, exp_m1, ln, ln_1p};
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipf {
    /// `n >= 1`, `exponent > 0`.
    pub fn new(n: u64, exponent: f64) -> Self {
        assert!(n >= 1 && exponent > 0.0, "zipf needs n >= 1 and s > 0");
        let mut z = Self {
            n: n as f64,
            exponent,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.s = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let mut k = (x + 0.5) as u64; // truncation of a positive value
            if k < 1 {
                k = 1;
            } else if k as f64 > self.n {
                k = self.n as u64;
            }
            let kf = k as f64;
            if kf - x <= self.s || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = ln(x);
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    fn h(&self, x: f64) -> f64 {
        exp(-self.exponent * ln(x))
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let mut t = x * (1.0 - self.exponent);
        if t < -1.0 {
            t = -1.0;
        }
        exp(helper1(t) * x)
    }
}

/// `ln(1 + x) / x`, continuous at 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        ln_1p(x) / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, continuous at 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        exp_m1(x) / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_follow_power_law() {
        let n = 1000;
        let s = 1.1;
        let z = Zipf::new(n, s);
        let mut rng = Rng::new(3);
        let draws = 400_000;
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k));
            counts[k as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        for k in [1usize, 2, 5, 10, 100] {
            let expected = draws as f64 * (k as f64).powf(-s) / norm;
            let got = counts[k] as f64;
            assert!(
                (got - expected).abs() < 5.0 * expected.sqrt() + 5.0,
                "rank {k}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn single_element() {
        let z = Zipf::new(1, 1.1);
        let mut rng = Rng::new(1);
        assert!((0..100).all(|_| z.sample(&mut rng) == 1));
    }
}
