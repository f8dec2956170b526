//! [`InlineStr`]: a string kept inline up to a capacity, else on the heap, for strings the
//! graph reads or writes with every event: inline, they sit in the cache lines already
//! loaded instead of behind a pointer.
//!
//! Contract: each string has one representation (inline exactly when it fits; zeros past
//! its length), so the derived comparisons are those of the strings. It serializes as a
//! string (the same bytes as a `Box<str>`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq)]
pub enum InlineStr<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> InlineStr<N> {
    /// Longest string kept inline.
    pub const CAPACITY: usize = {
        assert!(N <= u8::MAX as usize);
        N
    };

    pub fn new(s: &str) -> InlineStr<N> {
        if s.len() <= Self::CAPACITY {
            let mut bytes = [0; N];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            InlineStr::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            InlineStr::Heap(s.into())
        }
    }

    /// Replaces the string, reusing the inline space.
    pub fn set(&mut self, s: &str) {
        match self {
            InlineStr::Inline { len, bytes } if s.len() <= Self::CAPACITY => {
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                if s.len() < usize::from(*len) {
                    bytes[s.len()..usize::from(*len)].fill(0);
                }
                *len = s.len() as u8;
            }
            _ => *self = InlineStr::new(s),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            InlineStr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            InlineStr::Heap(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            InlineStr::Inline { .. } => {
                std::str::from_utf8(self.as_bytes()).expect("copied from a str")
            }
            InlineStr::Heap(s) => s,
        }
    }
}

impl<const N: usize> std::ops::Deref for InlineStr<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> std::fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl<const N: usize> std::fmt::Display for InlineStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl<const N: usize> From<&str> for InlineStr<N> {
    fn from(s: &str) -> Self {
        InlineStr::new(s)
    }
}

impl<const N: usize> Serialize for InlineStr<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de, const N: usize> Deserialize<'de> for InlineStr<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(InlineStr::new(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_representation_per_string_whatever_it_replaced() {
        let long = "x".repeat(9);
        let mut s = InlineStr::<8>::new("abcdefgh");
        assert!(matches!(s, InlineStr::Inline { .. }));
        s.set("ab");
        assert_eq!(s, InlineStr::new("ab"));
        s.set(&long);
        assert!(matches!(s, InlineStr::Heap(_)));
        assert_eq!(&*s, long);
        s.set("é");
        assert_eq!(s, InlineStr::new("é"));
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(bytes, postcard::to_allocvec("é").unwrap());
        assert_eq!(postcard::from_bytes::<InlineStr<8>>(&bytes).unwrap(), s);
    }
}
