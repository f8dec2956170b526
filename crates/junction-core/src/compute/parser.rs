//! The parser: text → [`Expr`], by precedence climbing.
//!
//! Contract — the grammar, loosest binding first:
//! ```text
//! expr    := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | compare
//! compare := sum (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in"
//!                 | "contains" | "starts_with") sum)?
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/" | "%") unary)*
//! unary   := "-" unary | primary
//! primary := number | duration | string | "true" | "false" | "null"
//!          | "[" (expr ("," expr)*)? "]" | "(" expr ")"
//!          | name "(" (arg ("," arg)*)? ")"
//!          | name ("." name | "." digits | "[" string "]")*
//! arg     := name "=" expr | name "in" expr | expr
//! ```
//! Comparisons do not chain (`a < b < c` is an error). Keywords (`and or not in contains
//! starts_with true false null`) cannot start a path but may follow a dot.

use super::ast::{Arg, ArgOp, BinOp, Expr, ExprKind, Lit, Span, UnOp};
use super::error::ExprError;
use super::lexer::{Tok, lex};

/// Parses a whole expression.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let tokens = lex(text)?;
    let mut p = Parser {
        text,
        tokens,
        pos: 0,
    };
    let expr = p.expr()?;
    if p.peek() != &Tok::End {
        return Err(p.error_here(format!(
            "expected an operator or the end, found {}",
            p.peek().describe()
        )));
    }
    Ok(expr)
}

const KEYWORDS: [&str; 9] = [
    "and",
    "or",
    "not",
    "in",
    "contains",
    "starts_with",
    "true",
    "false",
    "null",
];

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(Tok, Span)>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].0
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        let i = (self.pos + ahead).min(self.tokens.len() - 1);
        &self.tokens[i].0
    }

    fn span(&self) -> Span {
        self.tokens[self.pos].1
    }

    fn bump(&mut self) -> (Tok, Span) {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(w) if &**w == word)
    }

    fn error_here(&self, message: String) -> ExprError {
        ExprError::at(self.text, self.span(), message)
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<Span, ExprError> {
        if *self.peek() == tok {
            Ok(self.bump().1)
        } else {
            Err(self.error_here(format!("expected {what}, found {}", self.peek().describe())))
        }
    }

    fn binary(op: BinOp, l: Expr, r: Expr) -> Expr {
        let span = l.span.to(r.span);
        Expr {
            kind: ExprKind::Binary(op, Box::new(l), Box::new(r)),
            span,
        }
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.and()?;
        while self.is_word("or") {
            self.bump();
            let r = self.and()?;
            l = Self::binary(BinOp::Or, l, r);
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.not()?;
        while self.is_word("and") {
            self.bump();
            let r = self.not()?;
            l = Self::binary(BinOp::And, l, r);
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.is_word("not") {
            let (_, start) = self.bump();
            let e = self.not()?;
            let span = start.to(e.span);
            return Ok(Expr {
                kind: ExprKind::Unary(UnOp::Not, Box::new(e)),
                span,
            });
        }
        self.compare()
    }

    fn compare_op(&self) -> Option<(BinOp, usize)> {
        let op = match self.peek() {
            Tok::EqEq => BinOp::Eq,
            Tok::Ne => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            Tok::Assign => return None,
            Tok::Ident(w) => match &**w {
                "in" => BinOp::In,
                "contains" => BinOp::Contains,
                "starts_with" => BinOp::StartsWith,
                "not" if matches!(self.peek_at(1), Tok::Ident(w) if &**w == "in") => {
                    return Some((BinOp::NotIn, 2));
                }
                _ => return None,
            },
            _ => return None,
        };
        Some((op, 1))
    }

    fn compare(&mut self) -> Result<Expr, ExprError> {
        let l = self.sum()?;
        if *self.peek() == Tok::Assign {
            return Err(self.error_here(
                "`=` names an argument inside a call (as in `event = \"X\"`); compare with `==`"
                    .into(),
            ));
        }
        let Some((op, tokens)) = self.compare_op() else {
            return Ok(l);
        };
        for _ in 0..tokens {
            self.bump();
        }
        let r = self.sum()?;
        if self.compare_op().is_some() {
            return Err(self.error_here(
                "comparisons do not chain: use `and` (as in `a < b and b < c`)".into(),
            ));
        }
        Ok(Self::binary(op, l, r))
    }

    fn sum(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.product()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.product()?;
            l = Self::binary(op, l, r);
        }
    }

    fn product(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                Tok::Percent => BinOp::Mod,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            l = Self::binary(op, l, r);
        }
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if *self.peek() == Tok::Minus {
            let (_, start) = self.bump();
            let e = self.unary()?;
            let span = start.to(e.span);
            return Ok(Expr {
                kind: ExprKind::Unary(UnOp::Neg, Box::new(e)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let (tok, span) = self.bump();
        let lit = |l: Lit| Expr {
            kind: ExprKind::Lit(l),
            span,
        };
        match tok {
            Tok::Num(n) => Ok(lit(Lit::Num(n))),
            Tok::Dur(ms) => Ok(lit(Lit::Dur(ms))),
            Tok::Str(s) => Ok(lit(Lit::Str(s))),
            Tok::LParen => {
                let e = self.expr()?;
                let end = self.expect(Tok::RParen, "`)`")?;
                Ok(Expr {
                    kind: e.kind,
                    span: span.to(end),
                })
            }
            Tok::LBracket => {
                let mut items = Vec::new();
                if *self.peek() != Tok::RBracket {
                    loop {
                        items.push(self.expr()?);
                        if *self.peek() == Tok::Comma {
                            self.bump();
                            continue;
                        }
                        break;
                    }
                }
                let end = self.expect(Tok::RBracket, "`,` or `]`")?;
                Ok(Expr {
                    kind: ExprKind::List(items),
                    span: span.to(end),
                })
            }
            Tok::Ident(w) => match &*w {
                "true" => Ok(lit(Lit::Bool(true))),
                "false" => Ok(lit(Lit::Bool(false))),
                "null" => Ok(lit(Lit::Null)),
                kw if KEYWORDS.contains(&kw) => Err(ExprError::at(
                    self.text,
                    span,
                    format!("expected a value, found the keyword `{kw}`"),
                )),
                _ if *self.peek() == Tok::LParen => self.call(w, span),
                _ => self.path(w, span),
            },
            other => Err(ExprError::at(
                self.text,
                span,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }

    fn call(&mut self, name: Box<str>, name_span: Span) -> Result<Expr, ExprError> {
        self.bump(); // (
        let mut args = Vec::new();
        if *self.peek() != Tok::RParen {
            loop {
                args.push(self.arg()?);
                if *self.peek() == Tok::Comma {
                    self.bump();
                    continue;
                }
                break;
            }
        }
        let end = self.expect(Tok::RParen, "`,` or `)`")?;
        Ok(Expr {
            kind: ExprKind::Call {
                name,
                name_span,
                args,
            },
            span: name_span.to(end),
        })
    }

    fn arg(&mut self) -> Result<Arg, ExprError> {
        if let Tok::Ident(name) = self.peek().clone() {
            let op = match self.peek_at(1) {
                Tok::Assign => Some(ArgOp::Eq),
                Tok::Ident(w) if &**w == "in" => Some(ArgOp::In),
                _ => None,
            };
            if let Some(op) = op {
                let (_, span) = self.bump();
                self.bump();
                let value = self.expr()?;
                return Ok(Arg {
                    name: Some((name, span)),
                    op,
                    value,
                });
            }
        }
        Ok(Arg {
            name: None,
            op: ArgOp::Eq,
            value: self.expr()?,
        })
    }

    fn path(&mut self, first: Box<str>, start: Span) -> Result<Expr, ExprError> {
        let mut parts = vec![first];
        let mut span = start;
        loop {
            match self.peek() {
                Tok::Dot => {
                    self.bump();
                    match self.bump() {
                        (Tok::Ident(name), s) => {
                            parts.push(name);
                            span = span.to(s);
                        }
                        // An array index: `properties.items.0.sku`.
                        (Tok::Num(n), s)
                            if n >= 0.0
                                && n.fract() == 0.0
                                && !self.text[s.start..s.end].contains(['.', 'e', 'E']) =>
                        {
                            parts.push(self.text[s.start..s.end].into());
                            span = span.to(s);
                        }
                        (other, s) => {
                            return Err(ExprError::at(
                                self.text,
                                s,
                                format!("expected a name after `.`, found {}", other.describe()),
                            ));
                        }
                    }
                }
                Tok::LBracket => {
                    self.bump();
                    match self.bump() {
                        (Tok::Str(name), _) => parts.push(name),
                        (other, s) => {
                            return Err(ExprError::at(
                                self.text,
                                s,
                                format!(
                                    "expected a quoted name inside `[...]`, found {}",
                                    other.describe()
                                ),
                            ));
                        }
                    }
                    span = span.to(self.expect(Tok::RBracket, "`]`")?);
                }
                _ => break,
            }
        }
        Ok(Expr {
            kind: ExprKind::Path(parts),
            span,
        })
    }
}
