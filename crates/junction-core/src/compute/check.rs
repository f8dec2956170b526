//! The type checker: [`Expr`] → [`Node`], rejecting what can never work with an error at its
//! column.
//!
//! Contract:
//! - Outside aggregates (profile scope) only `traits.<path>`, `audience("key")`, `exists`,
//!   `now()`, aggregates, literals and operators are allowed. `traits.<key>` reads a computed
//!   trait or an audience of that key when one is defined, else the profile's trait.
//! - Inside an aggregate's value and `where` (event scope) any path reads the event
//!   (`event`, `type`, `timestamp`, `properties.x`, `context.x`, `traits.x`, `userId`, ...);
//!   aggregates, `audience` and `now()` are not allowed there (whether an event matches must
//!   not change with time: windows are `within`, which the incremental state slides).
//! - Static types catch operations that can never be true or meaningful (comparing a number
//!   with a string, `and` on a number, `sum` of a string literal); values read from events and
//!   traits are dynamic and checked only at run time (see `program.rs`).
//! - Every aggregate call is registered once per canonical text in the shared aggregate
//!   table, so equal calls across definitions share their state.

use std::collections::HashMap;
use std::sync::Arc;

use super::ast::{Arg, ArgOp, BinOp, Expr, ExprKind, Lit, Span, UnOp};
use super::error::ExprError;
use super::program::{AggFunc, AggSpec, Field, Node};
use super::value::Value;

/// Static types. `Any` is a value only known at run time (a trait, a property).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Any,
    Null,
    Bool,
    Num,
    Str,
    Time,
    Dur,
    List,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Any => "a value",
            Ty::Null => "null",
            Ty::Bool => "true/false",
            Ty::Num => "a number",
            Ty::Str => "a string",
            Ty::Time => "a timestamp",
            Ty::Dur => "a duration",
            Ty::List => "a list",
        }
    }

    fn is(self, want: Ty) -> bool {
        self == want || self == Ty::Any
    }
}

/// Event types a `type =` filter may name.
pub const EVENT_TYPES: [&str; 6] = ["track", "identify", "page", "screen", "group", "alias"];

/// Names the checker resolves: definitions by key, and the aggregate table being built.
pub struct Env<'a> {
    pub computed_traits: &'a HashMap<String, usize>,
    pub audiences: &'a HashMap<String, usize>,
    pub aggs: &'a mut Vec<AggSpec>,
    pub agg_index: &'a mut HashMap<String, usize>,
}

/// The checked expression, its type, and the definitions it reads (with where).
pub struct Checked {
    pub node: Node,
    pub ty: Ty,
    pub deps: Vec<(usize, Span)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Profile,
    Event,
}

/// Checks `expr` (parsed from `text`) at profile scope.
pub fn check(text: &str, expr: &Expr, env: &mut Env<'_>) -> Result<Checked, ExprError> {
    let mut c = Checker {
        text,
        env,
        deps: Vec::new(),
    };
    let (node, ty) = c.expr(expr, Scope::Profile)?;
    Ok(Checked {
        node,
        ty,
        deps: c.deps,
    })
}

const FUNCTIONS: &str = "count, sum, avg, min, max, first, last, most_frequent, unique, \
                         unique_count, first_seen, last_seen, audience, exists, now";

struct Checker<'a, 'b> {
    text: &'a str,
    env: &'a mut Env<'b>,
    deps: Vec<(usize, Span)>,
}

impl Checker<'_, '_> {
    fn err(&self, span: Span, message: String) -> ExprError {
        ExprError::at(self.text, span, message)
    }

    fn expr(&mut self, e: &Expr, scope: Scope) -> Result<(Node, Ty), ExprError> {
        match &e.kind {
            ExprKind::Lit(l) => Ok(literal(l)),
            ExprKind::List(items) => {
                let mut nodes = Vec::with_capacity(items.len());
                for item in items {
                    nodes.push(self.expr(item, scope)?.0);
                }
                Ok((Node::List(nodes), Ty::List))
            }
            ExprKind::Path(parts) => self.path(parts, e.span, scope),
            ExprKind::Call {
                name,
                name_span,
                args,
            } => self.call(name, *name_span, args, e.span, scope),
            ExprKind::Unary(UnOp::Not, inner) => {
                let (n, t) = self.expr(inner, scope)?;
                self.want(t, Ty::Bool, inner.span, "`not`")?;
                Ok((Node::Not(Box::new(n)), Ty::Bool))
            }
            ExprKind::Unary(UnOp::Neg, inner) => {
                let (n, t) = self.expr(inner, scope)?;
                if !(t.is(Ty::Num) || t == Ty::Dur) {
                    return Err(self.err(
                        inner.span,
                        format!("`-` needs a number or a duration, found {}", t.name()),
                    ));
                }
                Ok((Node::Neg(Box::new(n)), t))
            }
            ExprKind::Binary(op, l, r) => self.binary(*op, l, r, scope),
        }
    }

    fn want(&self, t: Ty, want: Ty, span: Span, what: &str) -> Result<(), ExprError> {
        if t.is(want) {
            Ok(())
        } else {
            Err(self.err(
                span,
                format!("{what} needs {}, found {}", want.name(), t.name()),
            ))
        }
    }

    fn binary(
        &mut self,
        op: BinOp,
        l: &Expr,
        r: &Expr,
        scope: Scope,
    ) -> Result<(Node, Ty), ExprError> {
        let (ln, lt) = self.expr(l, scope)?;
        let (rn, rt) = self.expr(r, scope)?;
        let what = format!("`{}`", op.symbol());
        let known = |t: Ty| t != Ty::Any && t != Ty::Null;
        let ty = match op {
            BinOp::And | BinOp::Or => {
                self.want(lt, Ty::Bool, l.span, &what)?;
                self.want(rt, Ty::Bool, r.span, &what)?;
                Ty::Bool
            }
            BinOp::Eq | BinOp::Ne => {
                if known(lt) && known(rt) && lt != rt {
                    return Err(self.err(
                        r.span,
                        format!(
                            "comparing {} with {} is always {}",
                            lt.name(),
                            rt.name(),
                            op == BinOp::Ne
                        ),
                    ));
                }
                Ty::Bool
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                for (t, span) in [(lt, l.span), (rt, r.span)] {
                    if !matches!(t, Ty::Any | Ty::Num | Ty::Str | Ty::Time | Ty::Dur) {
                        return Err(self.err(
                            span,
                            format!(
                                "{what} compares numbers, strings, timestamps or durations, found {}",
                                t.name()
                            ),
                        ));
                    }
                }
                if known(lt) && known(rt) && lt != rt {
                    return Err(self.err(
                        r.span,
                        format!("{what} cannot compare {} with {}", lt.name(), rt.name()),
                    ));
                }
                Ty::Bool
            }
            BinOp::In | BinOp::NotIn => {
                self.want(rt, Ty::List, r.span, &what)?;
                Ty::Bool
            }
            BinOp::Contains => {
                if !matches!(lt, Ty::Any | Ty::Str | Ty::List) {
                    return Err(self.err(
                        l.span,
                        format!("`contains` needs a string or a list, found {}", lt.name()),
                    ));
                }
                if lt == Ty::Str {
                    self.want(rt, Ty::Str, r.span, "`contains` on a string")?;
                }
                Ty::Bool
            }
            BinOp::StartsWith => {
                self.want(lt, Ty::Str, l.span, &what)?;
                self.want(rt, Ty::Str, r.span, &what)?;
                Ty::Bool
            }
            BinOp::Add | BinOp::Sub => match (lt, rt) {
                (Ty::Any, _) | (_, Ty::Any) => Ty::Any,
                (Ty::Num, Ty::Num) => Ty::Num,
                (Ty::Time, Ty::Dur) => Ty::Time,
                (Ty::Dur, Ty::Time) if op == BinOp::Add => Ty::Time,
                (Ty::Dur, Ty::Dur) => Ty::Dur,
                (Ty::Time, Ty::Time) if op == BinOp::Sub => Ty::Dur,
                _ => {
                    return Err(self.err(
                        r.span,
                        format!("{what} cannot combine {} and {}", lt.name(), rt.name()),
                    ));
                }
            },
            BinOp::Mul | BinOp::Div | BinOp::Mod => match (op, lt, rt) {
                (_, Ty::Any, _) | (_, _, Ty::Any) => Ty::Any,
                (_, Ty::Num, Ty::Num) => Ty::Num,
                (BinOp::Mul, Ty::Dur, Ty::Num) | (BinOp::Mul, Ty::Num, Ty::Dur) => Ty::Dur,
                (BinOp::Div, Ty::Dur, Ty::Num) => Ty::Dur,
                (BinOp::Div, Ty::Dur, Ty::Dur) => Ty::Num,
                _ => {
                    return Err(self.err(
                        r.span,
                        format!("{what} cannot combine {} and {}", lt.name(), rt.name()),
                    ));
                }
            },
        };
        Ok((Node::Bin(op, Box::new(ln), Box::new(rn)), ty))
    }

    fn path(
        &mut self,
        parts: &[Box<str>],
        span: Span,
        scope: Scope,
    ) -> Result<(Node, Ty), ExprError> {
        if scope == Scope::Event {
            let field = match (parts.len(), &*parts[0]) {
                (1, "event") => (Field::Name, Ty::Any),
                (1, "type") => (Field::Type, Ty::Str),
                (1, "timestamp") => (Field::Timestamp, Ty::Time),
                _ => (Field::Path(parts.into()), Ty::Any),
            };
            return Ok((Node::Field(field.0), field.1));
        }
        if &*parts[0] != "traits" || parts.len() < 2 {
            let hint = if matches!(&*parts[0], "properties" | "context" | "event" | "type") {
                format!(
                    "`{}` belongs to an event: read it inside an aggregate, as in \
                     `sum(properties.revenue)` or `count(where = {})`",
                    parts[0],
                    parts.join(".")
                )
            } else {
                "outside an aggregate only `traits.<key>` can be read".into()
            };
            return Err(self.err(span, format!("unknown name `{}`: {hint}", parts.join("."))));
        }
        if parts.len() == 2 {
            let key = &*parts[1];
            let def = self
                .env
                .computed_traits
                .get(key)
                .or_else(|| self.env.audiences.get(key));
            if let Some(&i) = def {
                self.deps.push((i, span));
                return Ok((Node::Def(i), Ty::Any));
            }
        }
        Ok((Node::Trait(parts[1..].into()), Ty::Any))
    }

    fn call(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[Arg],
        span: Span,
        scope: Scope,
    ) -> Result<(Node, Ty), ExprError> {
        match name {
            "now" => {
                if scope == Scope::Event {
                    return Err(self.err(
                        name_span,
                        "`now()` cannot be used inside an aggregate: use `within = ...` (as in \
                         `count(event = \"X\", within = 1h)`), which slides with the clock"
                            .into(),
                    ));
                }
                if let Some(a) = args.first() {
                    return Err(self.err(a.value.span, "`now()` takes no arguments".into()));
                }
                Ok((Node::Now, Ty::Time))
            }
            "exists" => {
                let arg = self.single_positional(name, args, span)?;
                let (n, _) = self.expr(&arg.value, scope)?;
                Ok((Node::Exists(Box::new(n)), Ty::Bool))
            }
            "audience" => {
                if scope == Scope::Event {
                    return Err(self.err(
                        name_span,
                        "`audience` cannot be used inside an aggregate".into(),
                    ));
                }
                let arg = self.single_positional(name, args, span)?;
                let ExprKind::Lit(Lit::Str(key)) = &arg.value.kind else {
                    return Err(self.err(
                        arg.value.span,
                        "`audience` takes the audience's key as a string, as in `audience(\"churned\")`".into(),
                    ));
                };
                let Some(&i) = self.env.audiences.get(&**key) else {
                    let mut known: Vec<&str> =
                        self.env.audiences.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(self.err(
                        arg.value.span,
                        format!("unknown audience `{key}` (known: {})", list_or_none(&known)),
                    ));
                };
                self.deps.push((i, arg.value.span));
                Ok((Node::Def(i), Ty::Bool))
            }
            _ => match AggFunc::named(name) {
                Some(func) if scope == Scope::Profile => self.aggregate(func, name, args, span),
                Some(_) => Err(self.err(
                    name_span,
                    format!("`{name}` cannot be used inside another aggregate"),
                )),
                None => Err(self.err(
                    name_span,
                    format!("unknown function `{name}` (known: {FUNCTIONS})"),
                )),
            },
        }
    }

    fn single_positional<'e>(
        &self,
        name: &str,
        args: &'e [Arg],
        span: Span,
    ) -> Result<&'e Arg, ExprError> {
        match args {
            [a] if a.name.is_none() => Ok(a),
            [a] => Err(self.err(
                a.name.as_ref().map_or(a.value.span, |n| n.1),
                format!("`{name}` takes one argument without a name"),
            )),
            _ => Err(self.err(span, format!("`{name}` takes exactly one argument"))),
        }
    }

    fn aggregate(
        &mut self,
        func: AggFunc,
        name: &str,
        args: &[Arg],
        span: Span,
    ) -> Result<(Node, Ty), ExprError> {
        let mut spec = AggSpec {
            func,
            value: None,
            events: None,
            types: None,
            filter: None,
            within_ms: None,
            key: String::new(),
        };
        let mut seen: Vec<&str> = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            let Some((arg_name, arg_span)) = &arg.name else {
                if i > 0 || !func.takes_value() {
                    let message = if func.takes_value() {
                        format!(
                            "only the first argument of `{name}` may be unnamed; name filters as in `event = \"X\"`"
                        )
                    } else {
                        format!("`{name}` takes only filters: `event`, `type`, `where`, `within`")
                    };
                    return Err(self.err(arg.value.span, message));
                }
                let (n, t) = self.expr(&arg.value, Scope::Event)?;
                if matches!(
                    func,
                    AggFunc::Sum | AggFunc::Avg | AggFunc::Min | AggFunc::Max
                ) && !t.is(Ty::Num)
                {
                    return Err(self.err(
                        arg.value.span,
                        format!("`{name}` needs numbers, found {}", t.name()),
                    ));
                }
                spec.value = Some(n);
                continue;
            };
            if seen.contains(&&**arg_name) {
                return Err(self.err(*arg_span, format!("`{arg_name}` is given twice")));
            }
            seen.push(arg_name);
            match (&**arg_name, arg.op) {
                ("event" | "type", op) => {
                    let names = self.names(arg, op, arg_name)?;
                    if &**arg_name == "type" {
                        if let Some(bad) = names.iter().find(|n| !EVENT_TYPES.contains(&&***n)) {
                            return Err(self.err(
                                arg.value.span,
                                format!(
                                    "unknown event type `{bad}` (known: {})",
                                    EVENT_TYPES.join(", ")
                                ),
                            ));
                        }
                        spec.types = Some(names);
                    } else {
                        spec.events = Some(names);
                    }
                }
                ("where", ArgOp::Eq) => {
                    let (n, t) = self.expr(&arg.value, Scope::Event)?;
                    self.want(t, Ty::Bool, arg.value.span, "`where`")?;
                    spec.filter = Some(n);
                }
                ("within", ArgOp::Eq) => match &arg.value.kind {
                    ExprKind::Lit(Lit::Dur(ms)) if *ms > 0 => spec.within_ms = Some(*ms),
                    _ => {
                        return Err(self.err(
                            arg.value.span,
                            "`within` takes a positive duration such as 30m, 12h or 7d".into(),
                        ));
                    }
                },
                (other, ArgOp::In) => {
                    return Err(self.err(
                        *arg_span,
                        format!("`{other} in` is not a filter: only `event in` and `type in` are"),
                    ));
                }
                (other, ArgOp::Eq) => {
                    return Err(self.err(
                        *arg_span,
                        format!("unknown filter `{other}` (known: event, type, where, within)"),
                    ));
                }
            }
        }
        if func.takes_value() && spec.value.is_none() {
            return Err(self.err(
                span,
                format!(
                    "`{name}` needs the value to aggregate first, as in `{name}(properties.price)`"
                ),
            ));
        }
        let ty = match func {
            AggFunc::Count
            | AggFunc::Sum
            | AggFunc::Avg
            | AggFunc::Min
            | AggFunc::Max
            | AggFunc::UniqueCount => Ty::Num,
            AggFunc::First | AggFunc::Last | AggFunc::MostFrequent => Ty::Any,
            AggFunc::Unique => Ty::List,
            AggFunc::FirstSeen | AggFunc::LastSeen => Ty::Time,
        };
        spec.key = canonical(name, args);
        let index = match self.env.agg_index.get(&spec.key) {
            Some(&i) => i,
            None => {
                let i = self.env.aggs.len();
                self.env.agg_index.insert(spec.key.clone(), i);
                self.env.aggs.push(spec);
                i
            }
        };
        Ok((Node::Agg(index), ty))
    }

    /// The string literal(s) of an `event`/`type` filter.
    fn names(&self, arg: &Arg, op: ArgOp, arg_name: &str) -> Result<Box<[Arc<str>]>, ExprError> {
        let bad = || {
            self.err(
                arg.value.span,
                format!(
                    "`{arg_name} =` takes a string and `{arg_name} in` a list of strings, as in `{arg_name} in [\"A\", \"B\"]`"
                ),
            )
        };
        let lit = |e: &Expr| match &e.kind {
            ExprKind::Lit(Lit::Str(s)) => Ok(Arc::<str>::from(&**s)),
            _ => Err(bad()),
        };
        match (op, &arg.value.kind) {
            (ArgOp::Eq, _) => Ok(Box::new([lit(&arg.value)?])),
            (ArgOp::In, ExprKind::List(items)) => items.iter().map(lit).collect(),
            (ArgOp::In, _) => Err(bad()),
        }
    }
}

/// The canonical text of an aggregate call: filters in a fixed order.
fn canonical(name: &str, args: &[Arg]) -> String {
    let mut sorted: Vec<&Arg> = args.iter().collect();
    sorted.sort_by_key(|a| a.name.as_ref().map(|(n, _)| n.clone()));
    let call = Expr {
        kind: ExprKind::Call {
            name: name.into(),
            name_span: Span::default(),
            args: sorted.into_iter().cloned().collect(),
        },
        span: Span::default(),
    };
    call.to_string()
}

fn literal(l: &Lit) -> (Node, Ty) {
    let (v, t) = match l {
        Lit::Null => (Value::Null, Ty::Null),
        Lit::Bool(b) => (Value::Bool(*b), Ty::Bool),
        Lit::Num(n) => (Value::Num(*n), Ty::Num),
        Lit::Str(s) => (Value::Str((&**s).into()), Ty::Str),
        Lit::Dur(ms) => (Value::Dur(*ms), Ty::Dur),
    };
    (Node::Const(v), t)
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
