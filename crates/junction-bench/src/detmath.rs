//! Deterministic elementary functions for the seeded generators.
//!
//! Contract: `ln`, `exp`, `ln_1p` and `exp_m1` are built only from IEEE-754 `+ - * /` and bit
//! manipulation, so they return bit-identical results on every platform (unlike the platform
//! `libm`, whose last-ulp rounding may differ between C libraries). Accuracy is a few ulps over
//! the finite positive range used here, which is all a sampler needs; they are not general-purpose
//! replacements (no special handling of subnormals, NaN only propagates through).

const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const LN2: f64 = std::f64::consts::LN_2;
const SQRT2: f64 = std::f64::consts::SQRT_2;

/// Natural logarithm of a positive, normal, finite `x`.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    // x = m * 2^e with m in [1, 2), then moved into [sqrt(1/2), sqrt(2)).
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    // ln(m) = 2 atanh(z), z = (m - 1) / (m + 1), |z| <= 0.1716.
    let z = (m - 1.0) / (m + 1.0);
    let z2 = z * z;
    let mut term = z;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 40.0 {
        sum += term / k;
        term *= z2;
        k += 2.0;
    }
    let e = e as f64;
    e * LN2_HI + (e * LN2_LO + 2.0 * sum)
}

/// `e^x` for `x` within the normal range (about -708..709); saturates outside it.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -708.0 {
        return 0.0;
    }
    let k = round_half_away(x / LN2);
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor series of e^r, |r| <= ln(2)/2.
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut n = 1.0;
    while n < 24.0 {
        term *= r / n;
        sum += term;
        n += 1.0;
    }
    sum * pow2(k as i64)
}

/// `ln(1 + x)` accurate for small `x` (x > -1).
pub fn ln_1p(x: f64) -> f64 {
    let u = 1.0 + x;
    if u == 1.0 { x } else { ln(u) * (x / (u - 1.0)) }
}

/// `e^x - 1` accurate for small `x`.
pub fn exp_m1(x: f64) -> f64 {
    let u = exp(x);
    if u == 1.0 {
        x
    } else if u - 1.0 == -1.0 {
        -1.0
    } else {
        (u - 1.0) * (x / ln(u))
    }
}

fn round_half_away(x: f64) -> f64 {
    // `f64::round` is exact and identical everywhere (it is not a libm call on any tier-1
    // target), but spell it out to keep this module self-contained.
    let t = x.trunc();
    if (x - t).abs() >= 0.5 {
        t + x.signum()
    } else {
        t
    }
}

fn pow2(k: i64) -> f64 {
    if k > 1023 {
        f64::INFINITY
    } else if k < -1022 {
        // Two steps keep results that fall into the subnormal range approximately right.
        pow2(k + 1022) * f64::from_bits(1u64 << 52)
    } else {
        f64::from_bits(((k + 1023) as u64) << 52)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1e-300)
    }

    #[test]
    fn ln_matches_std() {
        for &x in &[
            1e-300, 1e-10, 0.1, 0.5, 0.999, 1.0, 1.5, 2.0, 10.0, 1e6, 1e300,
        ] {
            assert!(close(ln(x), x.ln()), "{x}: {} vs {}", ln(x), x.ln());
        }
    }

    #[test]
    fn exp_matches_std() {
        for &x in &[
            -700.0, -20.0, -1.0, -1e-9, 0.0, 1e-9, 0.5, 1.0, 3.3, 100.0, 700.0,
        ] {
            assert!(close(exp(x), x.exp()), "{x}: {} vs {}", exp(x), x.exp());
        }
    }

    #[test]
    fn small_argument_helpers() {
        for &x in &[-0.5, -1e-6, 1e-12, 1e-6, 0.25, 3.0] {
            assert!((ln_1p(x) - x.ln_1p()).abs() <= 1e-15 * x.abs().max(1e-300) * 8.0 + 1e-300);
            assert!((exp_m1(x) - x.exp_m1()).abs() <= 1e-15 * x.abs().max(1e-300) * 8.0 + 1e-300);
        }
    }
}
