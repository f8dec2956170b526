//! Tokens of the expression language.
//!
//! Contract: [`lex`] turns the whole text into tokens with byte spans, or fails at the first
//! character that starts no token. Numbers are decimal (`3`, `0.5`, `1e3`, not `.5`); a number directly
//! followed by `s`, `m`, `h`, `d` or `w` is a duration. Strings are double- or single-quoted
//! with JSON escapes. `#` starts a comment to the end of the line.

use super::ast::Span;
use super::error::ExprError;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(Box<str>),
    Num(f64),
    /// Milliseconds.
    Dur(i64),
    Str(Box<str>),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    /// `=` (named arguments).
    Assign,
    EqEq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    End,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Num(n) => format!("the number {n}"),
            Tok::Dur(_) => "a duration".into(),
            Tok::Str(s) => format!("the string {}", serde_json::Value::from(&**s)),
            Tok::End => "the end of the expression".into(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Dot => ".",
            Tok::Assign => "=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            _ => "",
        }
    }
}

const MS: [(char, i64); 5] = [
    ('s', 1_000),
    ('m', 60_000),
    ('h', 3_600_000),
    ('d', 86_400_000),
    ('w', 604_800_000),
];

/// The tokens of `text`, ending with [`Tok::End`].
pub fn lex(text: &str) -> Result<Vec<(Tok, Span)>, ExprError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let two = |n: u8| b.get(i + 1) == Some(&n);
        let (tok, len) = match c {
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'[' => (Tok::LBracket, 1),
            b']' => (Tok::RBracket, 1),
            b',' => (Tok::Comma, 1),
            b'.' => (Tok::Dot, 1),
            b'=' if two(b'=') => (Tok::EqEq, 2),
            b'=' => (Tok::Assign, 1),
            b'!' if two(b'=') => (Tok::Ne, 2),
            b'<' if two(b'=') => (Tok::Le, 2),
            b'<' => (Tok::Lt, 1),
            b'>' if two(b'=') => (Tok::Ge, 2),
            b'>' => (Tok::Gt, 1),
            b'+' => (Tok::Plus, 1),
            b'-' => (Tok::Minus, 1),
            b'*' => (Tok::Star, 1),
            b'/' => (Tok::Slash, 1),
            b'%' => (Tok::Percent, 1),
            b'"' | b'\'' => {
                let (s, end) = string(text, i)?;
                (Tok::Str(s.into()), end - i)
            }
            b'0'..=b'9' => {
                let (tok, end) = number(text, i)?;
                (tok, end - i)
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$')
                {
                    j += 1;
                }
                (Tok::Ident(text[i..j].into()), j - i)
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(ExprError::at(
                    text,
                    Span::new(i, i + ch.len_utf8()),
                    format!("unexpected character `{ch}`"),
                ));
            }
        };
        i += len;
        out.push((tok, Span::new(start, i)));
    }
    out.push((Tok::End, Span::new(b.len(), b.len())));
    Ok(out)
}

/// A number or duration starting at `i`; returns it and the end offset.
fn number(text: &str, i: usize) -> Result<(Tok, usize), ExprError> {
    let b = text.as_bytes();
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    if j < b.len() && b[j] == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if j < b.len() && (b[j] == b'e' || b[j] == b'E') {
        let mut k = j + 1;
        if k < b.len() && (b[k] == b'+' || b[k] == b'-') {
            k += 1;
        }
        if k < b.len() && b[k].is_ascii_digit() {
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            j = k;
        }
    }
    let span = Span::new(i, j);
    let n: f64 = text[i..j]
        .parse()
        .map_err(|_| ExprError::at(text, span, format!("`{}` is not a number", &text[i..j])))?;
    let unit = b.get(j).map(|&c| c as char);
    let after_unit = b.get(j + 1);
    let word_continues =
        after_unit.is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$');
    if let Some((_, ms)) = MS.iter().find(|(u, _)| Some(*u) == unit)
        && !word_continues
    {
        let total = n * *ms as f64;
        if !total.is_finite() || total.abs() > 1e15 || total.fract() != 0.0 {
            return Err(ExprError::at(
                text,
                Span::new(i, j + 1),
                "a duration must be a whole number of milliseconds within ±31,000 years".into(),
            ));
        }
        return Ok((Tok::Dur(total as i64), j + 1));
    }
    if b.get(j)
        .is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_')
    {
        return Err(ExprError::at(
            text,
            Span::new(i, j + 1),
            "a number may only be followed by a duration unit: s, m, h, d or w (as in 30d)".into(),
        ));
    }
    Ok((Tok::Num(n), j))
}

/// A quoted string starting at `i` (the quote); returns its value and the end offset.
fn string(text: &str, i: usize) -> Result<(String, usize), ExprError> {
    let b = text.as_bytes();
    let quote = b[i];
    let mut out = String::new();
    let mut j = i + 1;
    loop {
        let Some(&c) = b.get(j) else {
            return Err(ExprError::at(
                text,
                Span::new(i, text.len()),
                "this string is not closed".into(),
            ));
        };
        if c == quote {
            return Ok((out, j + 1));
        }
        if c == b'\\' {
            let esc = b.get(j + 1).copied();
            let span = Span::new(j, (j + 2).min(text.len()));
            let ch = match esc {
                Some(b'"') => '"',
                Some(b'\'') => '\'',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'n') => '\n',
                Some(b't') => '\t',
                Some(b'r') => '\r',
                Some(b'u') => {
                    let hex = text.get(j + 2..j + 6).unwrap_or("");
                    let code = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                    let Some(ch) = code else {
                        return Err(ExprError::at(
                            text,
                            span,
                            "`\\u` needs four hex digits of a character".into(),
                        ));
                    };
                    out.push(ch);
                    j += 6;
                    continue;
                }
                _ => {
                    return Err(ExprError::at(
                        text,
                        span,
                        "unknown escape (known: \\\" \\' \\\\ \\/ \\n \\t \\r \\uXXXX)".into(),
                    ));
                }
            };
            out.push(ch);
            j += 2;
            continue;
        }
        let ch = text[j..].chars().next().expect("inside the text");
        out.push(ch);
        j += ch.len_utf8();
    }
}
