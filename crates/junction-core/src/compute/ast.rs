//! The syntax tree of an expression, with the byte span of every node for error messages.
//!
//! Contract: [`Expr`]'s `Display` prints a canonical form (one space around binary operators,
//! every binary operation parenthesized, named arguments as `name = value`): two expressions
//! with the same canonical form mean the same thing, which is how equal aggregates of
//! different definitions share one state.

use std::fmt;

/// Byte offsets `start..end` of a node in the expression text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(Box<str>),
    /// A duration literal such as `30d`, in milliseconds.
    Dur(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Contains,
    StartsWith,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::In => "in",
            BinOp::NotIn => "not in",
            BinOp::Contains => "contains",
            BinOp::StartsWith => "starts_with",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

/// How a named argument binds: `event = "X"` or `event in ["X", "Y"]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgOp {
    Eq,
    In,
}

/// One argument of a call.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The name of a named argument (`event`, `type`, `where`, `within`) and its span.
    pub name: Option<(Box<str>, Span)>,
    pub op: ArgOp,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Lit(Lit),
    List(Vec<Expr>),
    /// `traits.plan`, `properties.revenue`, `event`: dot-separated names.
    Path(Vec<Box<str>>),
    Call {
        name: Box<str>,
        name_span: Span,
        args: Vec<Arg>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// An expression and where it is in the text.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

impl fmt::Display for Lit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lit::Null => f.write_str("null"),
            Lit::Bool(b) => write!(f, "{b}"),
            Lit::Num(n) => write!(f, "{n}"),
            Lit::Str(s) => write!(f, "{}", serde_json::Value::from(&**s)),
            Lit::Dur(ms) => write!(f, "{ms}ms"),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Lit(l) => write!(f, "{l}"),
            ExprKind::List(items) => {
                f.write_str("[")?;
                for (i, e) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str("]")
            }
            ExprKind::Path(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_plain_name(p) {
                        f.write_str(p)?;
                    } else {
                        write!(f, "[{}]", serde_json::Value::from(&**p))?;
                    }
                }
                Ok(())
            }
            ExprKind::Call { name, args, .. } => {
                write!(f, "{name}(")?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match (&a.name, a.op) {
                        (Some((n, _)), ArgOp::Eq) => write!(f, "{n} = {}", a.value)?,
                        (Some((n, _)), ArgOp::In) => write!(f, "{n} in {}", a.value)?,
                        (None, _) => write!(f, "{}", a.value)?,
                    }
                }
                f.write_str(")")
            }
            ExprKind::Unary(UnOp::Not, e) => write!(f, "(not {e})"),
            ExprKind::Unary(UnOp::Neg, e) => write!(f, "(-{e})"),
            ExprKind::Binary(op, l, r) => write!(f, "({l} {} {r})", op.symbol()),
        }
    }
}

/// Whether `s` can be written as a bare path segment.
pub fn is_plain_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}
