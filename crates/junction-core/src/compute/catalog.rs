//! [`Catalog`]: a checked set of computed traits and audiences, and the incremental state
//! ([`ProfileState`]) that keeps their values current for one profile.
//!
//! Contract:
//! - [`Catalog::compile`] parses and checks every definition together: keys are unique per
//!   kind and usable as `traits.<key>`; `audience("k")` names a defined audience; no
//!   definition depends on itself through others (the error names the cycle). Definitions
//!   are evaluated in dependency order.
//! - A [`ProfileState`] holds one entry per aggregate that some event of the profile matched:
//!   without `within` a [`Fold`] (constant size per function), with `within` the matching
//!   events still inside the window (timestamp and value) and their running fold, refolded
//!   only when an event has left the window (evaluation is O(1) otherwise).
//! - [`Catalog::observe`] adds an event, [`Catalog::absorb`] combines the states of two
//!   merged profiles, [`Catalog::prune`] drops events that have left their windows. For any
//!   events, order of arrival, merge order and pruning, [`Catalog::evaluate`] equals the
//!   evaluation of a state built from scratch from all the events at that time, and
//!   [`super::reference::evaluate`]'s brute force over them (property-tested).
//! - `now` never decreases between calls for one state (the caller's clock is monotonic):
//!   an event that was outside its window when observed is never counted later.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::check::{Env, Ty, check};
use super::error::ExprError;
use super::fold::{Fold, Stamp};
use super::parser::parse;
use super::program::{AggSpec, Event, Field, Node, Scope, eval};
use super::value::Value;

/// Computed trait or audience.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefKind {
    ComputedTrait,
    Audience,
}

impl fmt::Display for DefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefKind::ComputedTrait => "computed trait",
            DefKind::Audience => "audience",
        })
    }
}

/// A definition as written (config file or API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionSpec {
    pub kind: DefKind,
    pub key: String,
    pub expr: String,
}

/// Why a set of definitions was refused: the definition, and where in its expression.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} `{key}`: {error}")]
pub struct DefinitionError {
    pub kind: DefKind,
    pub key: String,
    pub error: DefinitionProblem,
}

/// What is wrong with a definition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionProblem {
    #[error("{0}")]
    Expr(#[from] ExprError),
    #[error("{0}")]
    Key(String),
}

/// A checked definition.
#[derive(Clone, Debug)]
pub struct Definition {
    pub kind: DefKind,
    pub key: String,
    pub expr: String,
    node: Node,
    deps: Vec<usize>,
}

impl Definition {
    /// Whether its value can change with time alone (a window, or `now()`).
    fn reads_clock(&self, aggs: &[AggSpec]) -> bool {
        reads_clock(&self.node, aggs)
    }
}

fn reads_clock(node: &Node, aggs: &[AggSpec]) -> bool {
    match node {
        Node::Now => true,
        Node::Agg(i) => aggs[*i].within_ms.is_some(),
        Node::Const(_) | Node::Field(_) | Node::Trait(_) | Node::Def(_) => false,
        Node::List(items) => items.iter().any(|n| reads_clock(n, aggs)),
        Node::Exists(n) | Node::Not(n) | Node::Neg(n) => reads_clock(n, aggs),
        Node::Bin(_, l, r) => reads_clock(l, aggs) || reads_clock(r, aggs),
    }
}

/// A checked set of definitions and the aggregates they share.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    defs: Vec<Definition>,
    /// Definition indexes in dependency order.
    order: Vec<usize>,
    aggs: Vec<AggSpec>,
    /// Definitions whose value can change with time alone, directly or through others.
    clocked: Vec<bool>,
    /// The aggregates an event named so may match (ascending): those that list the name, and
    /// those without an `event` filter.
    by_event: HashMap<Arc<str>, Vec<usize>>,
    /// The aggregates an event with another name (or none) may match.
    any_event: Vec<usize>,
    /// Each aggregate's value for a profile no event matched.
    empty: Vec<Value>,
    /// Per definition: the aggregates it reads itself, and whether it reads the profile's
    /// traits or `now()` itself (see [`Catalog::evaluate_changed`]).
    reads: Vec<DefReads>,
}

#[derive(Clone, Debug, Default)]
struct DefReads {
    aggs: Vec<usize>,
    always: bool,
}

impl DefReads {
    fn of(node: &Node) -> DefReads {
        fn walk(node: &Node, out: &mut DefReads) {
            match node {
                Node::Agg(i) => out.aggs.push(*i),
                Node::Now | Node::Trait(_) | Node::Field(_) => out.always = true,
                Node::Const(_) | Node::Def(_) => {}
                Node::List(items) => items.iter().for_each(|n| walk(n, out)),
                Node::Exists(n) | Node::Not(n) | Node::Neg(n) => walk(n, out),
                Node::Bin(_, l, r) => {
                    walk(l, out);
                    walk(r, out);
                }
            }
        }
        let mut out = DefReads::default();
        walk(node, &mut out);
        out
    }
}

/// Reads a profile's own traits (`traits.a.b` → `["a", "b"]`).
pub trait TraitSource {
    fn trait_value(&self, path: &[Box<str>]) -> Value;
}

impl TraitSource for serde_json::Map<String, serde_json::Value> {
    fn trait_value(&self, path: &[Box<str>]) -> Value {
        match self.get(&*path[0]) {
            Some(v) => super::program::lookup(v, &path[1..]),
            None => Value::Null,
        }
    }
}

/// Whether `key` can be a definition's key (usable as `traits.<key>`).
fn valid_key(key: &str) -> bool {
    super::ast::is_plain_name(key) && key.len() <= 120
}

impl Catalog {
    /// Checks `specs` together (see the module docs).
    pub fn compile(specs: &[DefinitionSpec]) -> Result<Catalog, DefinitionError> {
        let fail = |s: &DefinitionSpec, error: DefinitionProblem| DefinitionError {
            kind: s.kind,
            key: s.key.clone(),
            error,
        };
        let mut computed_traits = HashMap::new();
        let mut audiences = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            if !valid_key(&s.key) {
                return Err(fail(
                    s,
                    DefinitionProblem::Key(
                        "a key is 1 to 120 letters, digits and `_`, starting with a letter or `_`"
                            .into(),
                    ),
                ));
            }
            let names = match s.kind {
                DefKind::ComputedTrait => &mut computed_traits,
                DefKind::Audience => &mut audiences,
            };
            if names.insert(s.key.clone(), i).is_some() {
                return Err(fail(
                    s,
                    DefinitionProblem::Key(format!("another {} has this key", s.kind)),
                ));
            }
        }
        let mut aggs = Vec::new();
        let mut agg_index = HashMap::new();
        let mut defs = Vec::with_capacity(specs.len());
        let mut dep_spans = Vec::with_capacity(specs.len());
        for s in specs {
            let mut env = Env {
                computed_traits: &computed_traits,
                audiences: &audiences,
                aggs: &mut aggs,
                agg_index: &mut agg_index,
            };
            let checked = parse(&s.expr)
                .and_then(|e| check(&s.expr, &e, &mut env))
                .map_err(|e| fail(s, e.into()))?;
            if s.kind == DefKind::Audience && !matches!(checked.ty, Ty::Bool | Ty::Any) {
                let e = ExprError::at(
                    &s.expr,
                    Default::default(),
                    "an audience's expression must be true or false for a profile (a comparison, \
                     `and`, `or`, `not`, `exists`, `audience`)"
                        .into(),
                );
                return Err(fail(s, e.into()));
            }
            let mut deps: Vec<usize> = checked.deps.iter().map(|(d, _)| *d).collect();
            deps.sort_unstable();
            deps.dedup();
            dep_spans.push(checked.deps);
            defs.push(Definition {
                kind: s.kind,
                key: s.key.clone(),
                expr: s.expr.clone(),
                node: checked.node,
                deps,
            });
        }
        let order = dependency_order(&defs).map_err(|cycle| {
            let first = cycle[0];
            let span = dep_spans[first]
                .iter()
                .find(|(d, _)| *d == cycle[1 % cycle.len()])
                .map(|(_, s)| *s)
                .unwrap_or_default();
            let path: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&first))
                .map(|&i| format!("`{}`", defs[i].key))
                .collect();
            let e = ExprError::at(
                &specs[first].expr,
                span,
                format!(
                    "definitions depend on each other in a cycle: {}",
                    path.join(" → ")
                ),
            );
            fail(&specs[first], e.into())
        })?;
        let mut clocked = vec![false; defs.len()];
        for &i in &order {
            clocked[i] = defs[i].reads_clock(&aggs) || defs[i].deps.iter().any(|&d| clocked[d]);
        }
        let any_event: Vec<usize> = (0..aggs.len())
            .filter(|&i| aggs[i].events.is_none())
            .collect();
        let mut by_event: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, spec) in aggs.iter().enumerate() {
            for name in spec.events.iter().flatten() {
                by_event.entry(Arc::clone(name)).or_default().push(i);
            }
        }
        for list in by_event.values_mut() {
            list.extend(&any_event);
            list.sort_unstable();
            list.dedup();
        }
        let empty = aggs
            .iter()
            .map(|a| Fold::new(a.func).finish(a.func))
            .collect();
        let reads = defs.iter().map(|d| DefReads::of(&d.node)).collect();
        Ok(Catalog {
            defs,
            order,
            aggs,
            clocked,
            by_event,
            any_event,
            empty,
            reads,
        })
    }

    pub fn definitions(&self) -> &[Definition] {
        &self.defs
    }

    pub fn aggregates(&self) -> &[AggSpec] {
        &self.aggs
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Whether some definition reads `now()` (its value can change at any time, not only
    /// when an event leaves a window: the caller re-evaluates such profiles periodically).
    pub fn reads_now(&self) -> bool {
        fn has_now(node: &Node) -> bool {
            match node {
                Node::Now => true,
                Node::List(items) => items.iter().any(has_now),
                Node::Exists(n) | Node::Not(n) | Node::Neg(n) => has_now(n),
                Node::Bin(_, l, r) => has_now(l) || has_now(r),
                Node::Const(_) | Node::Field(_) | Node::Trait(_) | Node::Def(_) | Node::Agg(_) => {
                    false
                }
            }
        }
        self.defs.iter().any(|d| has_now(&d.node))
    }

    /// Whether definition `i`'s value can change with time alone (a `within` window or
    /// `now()`, directly or through a definition it reads).
    pub fn reads_clock(&self, i: usize) -> bool {
        self.clocked[i]
    }

    /// Adds `ev` to every aggregate it matches.
    pub fn observe(&self, state: &mut ProfileState, ev: &Event<'_>, now_ms: i64) {
        let candidates = ev
            .text("event")
            .and_then(|name| self.by_event.get(name))
            .unwrap_or(&self.any_event);
        for &i in candidates {
            let spec = &self.aggs[i];
            if !spec.in_window(ev.timestamp_ms, now_ms) || !spec.matches(ev, now_ms) {
                continue;
            }
            let value = spec.value_of(ev, now_ms);
            let at = (ev.timestamp_ms, ev.offset);
            state.touched.add(i);
            match state.slot(i, spec) {
                Slot::Fold(f) => f.add(at, &value),
                Slot::Window {
                    entries,
                    oldest,
                    fold,
                } => {
                    fold.add(at, &value);
                    if entries.is_empty() || at < *oldest {
                        *oldest = at;
                    }
                    entries.push((at, value));
                }
            }
        }
    }

    /// Combines `other` (the state of a profile merged into this one) into `state`.
    pub fn absorb(&self, state: &mut ProfileState, other: ProfileState) {
        state.touched = Touched::all();
        for (i, slot) in other.slots {
            let spec = &self.aggs[i as usize];
            match (state.slot(i as usize, spec), slot) {
                (Slot::Fold(a), Slot::Fold(b)) => a.merge(b),
                (
                    Slot::Window {
                        entries,
                        oldest,
                        fold,
                    },
                    Slot::Window {
                        entries: more,
                        oldest: their_oldest,
                        fold: theirs,
                    },
                ) => {
                    if entries.is_empty() || (!more.is_empty() && their_oldest < *oldest) {
                        *oldest = their_oldest;
                    }
                    entries.extend(more);
                    fold.merge(theirs);
                }
                _ => unreachable!("an aggregate's slot kind follows its spec"),
            }
        }
    }

    /// Drops window entries that have left their window at `now_ms`.
    pub fn prune(&self, state: &mut ProfileState, now_ms: i64) {
        let touched = &mut state.touched;
        state.slots.retain_mut(|(i, slot)| match slot {
            Slot::Window {
                entries,
                oldest,
                fold,
            } => {
                let spec = &self.aggs[*i as usize];
                if !entries.is_empty() && !spec.in_window(oldest.0, now_ms) {
                    entries.retain(|(s, _)| spec.in_window(s.0, now_ms));
                    *fold = fold_of(spec, entries.iter());
                    *oldest = entries.iter().map(|(s, _)| *s).min().unwrap_or_default();
                    touched.add(*i as usize);
                }
                !entries.is_empty()
            }
            Slot::Fold(_) => true,
        });
    }

    /// The earliest time at which an event leaves a window of this state (the results may
    /// change then without a new event); `None` when no window holds an event.
    pub fn next_expiry(&self, state: &ProfileState) -> Option<i64> {
        state
            .slots
            .iter()
            .filter_map(|(i, slot)| match slot {
                Slot::Window {
                    entries, oldest, ..
                } => {
                    let within = self.aggs[*i as usize].within_ms?;
                    (!entries.is_empty()).then(|| oldest.0.saturating_add(within))
                }
                Slot::Fold(_) => None,
            })
            .min()
    }

    /// The value of aggregate `i` for `state` at `now_ms`: a window's running fold while its
    /// oldest entry is still inside (then all are), else a fold of the entries still inside.
    fn agg_value(&self, state: &ProfileState, i: usize, now_ms: i64) -> Value {
        match state.get(i) {
            Some(slot) => self.slot_value(slot, i, now_ms),
            None => self.empty[i].clone(),
        }
    }

    /// The value of aggregate `i` held in `slot` (see [`Catalog::agg_value`]).
    fn slot_value(&self, slot: &Slot, i: usize, now_ms: i64) -> Value {
        let spec = &self.aggs[i];
        match slot {
            Slot::Fold(f) => f.finish(spec.func),
            Slot::Window {
                entries,
                oldest,
                fold,
            } => {
                if entries.is_empty() || spec.in_window(oldest.0, now_ms) {
                    fold.finish(spec.func)
                } else {
                    let inside = entries.iter().filter(|(s, _)| spec.in_window(s.0, now_ms));
                    fold_of(spec, inside).finish(spec.func)
                }
            }
        }
    }

    /// The value of every definition (in definition order) for a profile with these
    /// aggregates and traits at `now_ms`. An audience's value is `true` or `false`.
    pub fn evaluate(
        &self,
        state: &ProfileState,
        traits: &dyn TraitSource,
        now_ms: i64,
    ) -> Vec<Value> {
        // Every aggregate's value in one pass over the slots.
        let mut values = self.empty.clone();
        for (i, slot) in &state.slots {
            values[*i as usize] = self.slot_value(slot, *i as usize, now_ms);
        }
        self.evaluate_with(&|i| values[i].clone(), traits, now_ms)
    }

    /// Brings `results` (every definition's value, as [`Catalog::evaluate`] gave them when
    /// this state was last evaluated here) to their values now, re-evaluating only the
    /// definitions that can have changed: those reading an aggregate observed, merged or
    /// pruned since, a window whose oldest event is outside by now, the profile's traits or
    /// `now()`, or a definition that changed. Without `results` (empty), evaluates all.
    /// `changes` (reused between calls) says afterwards which values differ from before (all
    /// of them without `results`).
    pub fn evaluate_changed(
        &self,
        state: &mut ProfileState,
        traits: &dyn TraitSource,
        now_ms: i64,
        results: &mut Vec<Value>,
        changes: &mut Changes,
    ) {
        let touched = std::mem::take(&mut state.touched);
        let Changes { dirty, changed } = changes;
        changed.clear();
        if results.len() != self.defs.len() {
            *results = self.evaluate(state, traits, now_ms);
            changed.resize(self.defs.len(), true);
            return;
        }
        changed.resize(self.defs.len(), false);
        dirty.clear();
        dirty.extend((0..self.aggs.len()).map(|i| touched.has(i)));
        for (i, slot) in &state.slots {
            if let Slot::Window {
                entries, oldest, ..
            } = slot
                && !entries.is_empty()
                && !self.aggs[*i as usize].in_window(oldest.0, now_ms)
            {
                dirty[*i as usize] = true;
            }
        }
        let agg = |i| self.agg_value(state, i, now_ms);
        for &i in &self.order {
            let reads = &self.reads[i];
            let affected = reads.always
                || reads.aggs.iter().any(|&a| dirty[a])
                || self.defs[i].deps.iter().any(|&d| changed[d]);
            if affected {
                let v = self.evaluate_def(i, &agg, traits, results, now_ms);
                if v != results[i] {
                    changed[i] = true;
                    results[i] = v;
                }
            }
        }
    }

    /// The value of definition `target` alone (and of what it reads), as
    /// [`Catalog::evaluate`] would give it.
    pub fn evaluate_one(
        &self,
        state: &ProfileState,
        traits: &dyn TraitSource,
        now_ms: i64,
        target: usize,
    ) -> Value {
        let mut needed = vec![false; self.defs.len()];
        let mut stack = vec![target];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut needed[i], true) {
                stack.extend(&self.defs[i].deps);
            }
        }
        let agg = |i| self.agg_value(state, i, now_ms);
        let mut results = vec![Value::Null; self.defs.len()];
        for &i in self.order.iter().filter(|&&i| needed[i]) {
            results[i] = self.evaluate_def(i, &agg, traits, &results, now_ms);
        }
        std::mem::take(&mut results[target])
    }

    fn evaluate_def(
        &self,
        i: usize,
        agg: &dyn Fn(usize) -> Value,
        traits: &dyn TraitSource,
        results: &[Value],
        now_ms: i64,
    ) -> Value {
        let def = &self.defs[i];
        let scope = ProfileScope {
            agg,
            traits,
            results,
            now_ms,
        };
        let v = eval(&def.node, &scope);
        match def.kind {
            DefKind::Audience => Value::Bool(v.is_true()),
            DefKind::ComputedTrait => v,
        }
    }

    /// [`Catalog::evaluate`] with aggregate values from `agg` (the reference evaluator
    /// supplies its own).
    pub(crate) fn evaluate_with(
        &self,
        agg: &dyn Fn(usize) -> Value,
        traits: &dyn TraitSource,
        now_ms: i64,
    ) -> Vec<Value> {
        let mut results = vec![Value::Null; self.defs.len()];
        for &i in &self.order {
            results[i] = self.evaluate_def(i, agg, traits, &results, now_ms);
        }
        results
    }
}

struct ProfileScope<'a> {
    agg: &'a dyn Fn(usize) -> Value,
    traits: &'a dyn TraitSource,
    results: &'a [Value],
    now_ms: i64,
}

impl Scope for ProfileScope<'_> {
    fn field(&self, _f: &Field) -> Value {
        Value::Null
    }
    fn trait_value(&self, path: &[Box<str>]) -> Value {
        self.traits.trait_value(path)
    }
    fn def(&self, index: usize) -> Value {
        self.results[index].clone()
    }
    fn agg(&self, index: usize) -> Value {
        (self.agg)(index)
    }
    fn now_ms(&self) -> i64 {
        self.now_ms
    }
}

/// Definition indexes with every definition after those it reads, or a cycle.
fn dependency_order(defs: &[Definition]) -> Result<Vec<usize>, Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        i: usize,
        defs: &[Definition],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        out: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match marks[i] {
            Mark::Done => return Ok(()),
            Mark::Open => {
                let from = stack.iter().position(|&s| s == i).unwrap_or(0);
                return Err(stack[from..].to_vec());
            }
            Mark::New => {}
        }
        marks[i] = Mark::Open;
        stack.push(i);
        for &d in &defs[i].deps {
            visit(d, defs, marks, stack, out)?;
        }
        stack.pop();
        marks[i] = Mark::Done;
        out.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; defs.len()];
    let mut out = Vec::with_capacity(defs.len());
    for i in 0..defs.len() {
        visit(i, defs, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// The aggregate state of one profile (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileState {
    /// By aggregate index, ascending; only aggregates some event matched.
    slots: Vec<(u32, Slot)>,
    /// The aggregates changed since the last [`Catalog::evaluate_changed`] (see [`Touched`]).
    touched: Touched,
}

/// Which definitions [`Catalog::evaluate_changed`] changed, with its working space (kept
/// between calls so that evaluating allocates nothing).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Per aggregate: whether it may have changed.
    dirty: Vec<bool>,
    /// Per definition: whether its value changed.
    changed: Vec<bool>,
}

impl Changes {
    /// The definitions whose value changed, ascending.
    pub fn changed(&self) -> impl Iterator<Item = usize> + '_ {
        (self.changed.iter().enumerate()).filter_map(|(i, &c)| c.then_some(i))
    }

    /// Whether any value changed.
    pub fn any(&self) -> bool {
        self.changed.contains(&true)
    }
}

/// A set of aggregate indexes: bit `i` for aggregate `i` below 63, bit 63 for "all".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Touched(u64);

impl Touched {
    const ALL: u64 = 1 << 63;

    fn add(&mut self, i: usize) {
        self.0 |= if i < 63 { 1 << i } else { Self::ALL };
    }

    fn all() -> Touched {
        Touched(Self::ALL)
    }

    fn has(self, i: usize) -> bool {
        self.0 & Self::ALL != 0 || (i < 63 && self.0 & (1 << i) != 0)
    }
}

#[derive(Clone, Debug)]
pub enum Slot {
    Fold(Fold),
    /// Matching events inside the window as of the last prune, by (timestamp, offset), in
    /// no order (events arrive out of time order; an insert in order cost a shift of the
    /// window), the oldest of them (when there is one), and the fold of exactly those
    /// entries (so evaluating while none has aged out is O(1)).
    Window {
        entries: Vec<(Stamp, Value)>,
        oldest: Stamp,
        fold: Fold,
    },
}

/// Slots are equal when they hold the same entries, in whatever order.
impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        match (self, other) {
            (Slot::Fold(a), Slot::Fold(b)) => a == b,
            (
                Slot::Window {
                    entries: a,
                    oldest: a_oldest,
                    fold: a_fold,
                },
                Slot::Window {
                    entries: b,
                    oldest: b_oldest,
                    fold: b_fold,
                },
            ) => {
                let sorted = |e: &[(Stamp, Value)]| {
                    let mut e = e.to_vec();
                    e.sort_by_key(|(s, _)| *s);
                    e
                };
                a_fold == b_fold && (a.is_empty() || a_oldest == b_oldest) && sorted(a) == sorted(b)
            }
            _ => false,
        }
    }
}

/// The fold of `entries` for `spec`'s function.
fn fold_of<'a>(spec: &AggSpec, entries: impl Iterator<Item = &'a (Stamp, Value)>) -> Fold {
    let mut fold = Fold::new(spec.func);
    for (at, v) in entries {
        fold.add(*at, v);
    }
    fold
}

impl ProfileState {
    fn get(&self, i: usize) -> Option<&Slot> {
        self.slots
            .binary_search_by_key(&(i as u32), |(k, _)| *k)
            .ok()
            .map(|p| &self.slots[p].1)
    }

    fn slot(&mut self, i: usize, spec: &AggSpec) -> &mut Slot {
        let p = match self.slots.binary_search_by_key(&(i as u32), |(k, _)| *k) {
            Ok(p) => p,
            Err(p) => {
                let slot = match spec.within_ms {
                    Some(_) => Slot::Window {
                        entries: Vec::new(),
                        oldest: Stamp::default(),
                        fold: Fold::new(spec.func),
                    },
                    None => Slot::Fold(Fold::new(spec.func)),
                };
                self.slots.insert(p, (i as u32, slot));
                p
            }
        };
        &mut self.slots[p].1
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
