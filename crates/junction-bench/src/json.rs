//! A minimal, allocation-free JSON writer for the event generator.
//!
//! Contract: appends compact JSON to a `Vec<u8>`; commas are inserted automatically between
//! members and array items; strings are escaped per RFC 8259. The caller is responsible for
//! balancing `begin_*`/`end_*` (debug builds of the tests parse every output with serde_json).

use std::fmt::{self, Write as _};

pub struct JsonWriter<'a> {
    out: &'a mut Vec<u8>,
    comma: bool,
}

impl<'a> JsonWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, comma: false }
    }

    /// Current length of the output buffer (for recording offsets of values).
    pub fn position(&self) -> usize {
        self.out.len()
    }

    fn sep(&mut self) {
        if self.comma {
            self.out.push(b',');
        }
    }

    pub fn begin_object(&mut self) {
        self.sep();
        self.out.push(b'{');
        self.comma = false;
    }

    pub fn end_object(&mut self) {
        self.out.push(b'}');
        self.comma = true;
    }

    pub fn begin_array(&mut self) {
        self.sep();
        self.out.push(b'[');
        self.comma = false;
    }

    pub fn end_array(&mut self) {
        self.out.push(b']');
        self.comma = true;
    }

    pub fn key(&mut self, k: &str) {
        self.sep();
        escape_into(self.out, k);
        self.out.push(b':');
        self.comma = false;
    }

    pub fn string(&mut self, v: &str) {
        self.sep();
        escape_into(self.out, v);
        self.comma = true;
    }

    /// A string built from format arguments, escaped, without an intermediate allocation.
    pub fn string_fmt(&mut self, args: fmt::Arguments<'_>) {
        self.sep();
        self.out.push(b'"');
        let _ = Escaper(self.out).write_fmt(args);
        self.out.push(b'"');
        self.comma = true;
    }

    pub fn uint(&mut self, v: u64) {
        self.sep();
        push_u64(self.out, v);
        self.comma = true;
    }

    /// A decimal number with two fraction digits from an integer count of hundredths.
    pub fn cents(&mut self, v: u64) {
        self.sep();
        push_u64(self.out, v / 100);
        self.out.push(b'.');
        let c = (v % 100) as u8;
        self.out.push(b'0' + c / 10);
        self.out.push(b'0' + c % 10);
        self.comma = true;
    }

    pub fn bool(&mut self, v: bool) {
        self.sep();
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        self.comma = true;
    }

    pub fn kv_str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.string(v);
    }

    pub fn kv_fmt(&mut self, k: &str, args: fmt::Arguments<'_>) {
        self.key(k);
        self.string_fmt(args);
    }

    pub fn kv_uint(&mut self, k: &str, v: u64) {
        self.key(k);
        self.uint(v);
    }

    pub fn kv_cents(&mut self, k: &str, v: u64) {
        self.key(k);
        self.cents(v);
    }

    pub fn kv_bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.bool(v);
    }

    /// `"k":{...}` with the members written by `f`.
    pub fn object(&mut self, k: &str, f: impl FnOnce(&mut Self)) {
        self.key(k);
        self.begin_object();
        f(self);
        self.end_object();
    }

    /// `"k":[...]` with the items written by `f`.
    pub fn array(&mut self, k: &str, f: impl FnOnce(&mut Self)) {
        self.key(k);
        self.begin_array();
        f(self);
        self.end_array();
    }
}

/// Appends the decimal digits of `v`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Writes `v` as lower-case hex, left-padded with zeros to exactly `width` digits
/// (higher digits are dropped).
pub fn write_hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = v;
    for slot in out.iter_mut().rev() {
        *slot = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    Escaper(out)
        .write_str(s)
        .expect("writing to a Vec cannot fail");
    out.push(b'"');
}

struct Escaper<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        if !bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
            self.0.extend_from_slice(bytes);
            return Ok(());
        }
        for &b in bytes {
            match b {
                b'"' => self.0.extend_from_slice(b"\\\""),
                b'\\' => self.0.extend_from_slice(b"\\\\"),
                b'\n' => self.0.extend_from_slice(b"\\n"),
                b'\r' => self.0.extend_from_slice(b"\\r"),
                b'\t' => self.0.extend_from_slice(b"\\t"),
                b if b < 0x20 => {
                    self.0.extend_from_slice(b"\\u00");
                    let mut h = [0u8; 2];
                    write_hex(&mut h, b as u64);
                    self.0.extend_from_slice(&h);
                }
                b => self.0.push(b),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_nested_json() {
        let mut out = Vec::new();
        let mut w = JsonWriter::new(&mut out);
        w.begin_object();
        w.kv_str("a", "q\"uote\\ \n\u{1}");
        w.kv_uint("n", 12345);
        w.kv_cents("price", 1905);
        w.array("xs", |w| {
            w.uint(1);
            w.begin_object();
            w.kv_bool("b", true);
            w.end_object();
            w.string_fmt(format_args!("id-{}", 7));
        });
        w.object("empty", |_| {});
        w.end_object();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], "q\"uote\\ \n\u{1}");
        assert_eq!(v["price"], 19.05);
        assert_eq!(v["xs"][2], "id-7");
        assert_eq!(v["empty"], serde_json::json!({}));
    }

    #[test]
    fn hex_is_fixed_width() {
        let mut b = [0u8; 6];
        write_hex(&mut b, 0xabc);
        assert_eq!(&b, b"000abc");
    }
}
