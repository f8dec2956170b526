//! Building the columns of a part of the log by reading it once.
//!
//! Contract: [`build`] reads the records of `[from, to)` and returns, per offset, what the
//! history pass needs of it (see [`Part`]): the type and name from the identity projection
//! when it has them, else from the JSON; the raw values at `paths` of the events whose
//! type and name are wanted (the JSON block of a frame is decompressed only when one of
//! its records is wanted or has no projection); derived (when wanted, else only
//! [`PRESENT`])
//! events, and events that are not JSON objects, whole. Offsets with no record (erased,
//! never written) stay [`ABSENT`]. It fails when the log does, or when `stop` is set (checked
//! between frames).

use std::sync::atomic::{AtomicBool, Ordering};

use junction_core::compute::paths::{Path, scan};
use rustc_hash::FxHashMap as HashMap;

use super::{ABSENT, PRESENT, Part, RAW, Raw};
use crate::ingest::DERIVED_SOURCE;
use crate::log::{LogReader, Pick, RecordRef};

/// Whether the events of a type and name (`None`: no name) need their values.
pub type NeedsValues<'a> = dyn Fn(&str, Option<&str>) -> bool + Sync + 'a;

/// What a part is built for: the events of which types and names need their values
/// (`None`: all), and whether derived events are read (else they are only [`PRESENT`]).
#[derive(Clone, Copy)]
pub struct Wanted<'w> {
    pub values: Option<&'w NeedsValues<'w>>,
    pub derived: bool,
}

impl Wanted<'_> {
    /// Everything (a part to keep).
    pub const ALL: Wanted<'static> = Wanted {
        values: None,
        derived: true,
    };
}

/// The columns of the records in `[from, to)` of the log in `log_dir`, with the values at
/// `paths` of the events `wanted` (the others get none), derived events as `wanted`.
pub fn build(
    log_dir: &std::path::Path,
    (from, to): (u64, u64),
    paths: &[Path],
    wanted: Wanted<'_>,
    stop: &AtomicBool,
) -> anyhow::Result<Part> {
    let len = usize::try_from(to - from)?;
    let mut builder = Builder {
        from,
        wants_json: !paths.is_empty(),
        wanted,
        wanted_ids: Vec::new(),
        part: Part {
            kinds: vec![ABSENT; len],
            paths: paths.to_vec(),
            values: vec![Vec::new(); paths.len()],
            ..Part::default()
        },
        ids: HashMap::default(),
        key: String::new(),
    };
    let mut reader = LogReader::open(log_dir, from)?;
    reader.set_end_offset(Some(to));
    while reader.next_frame_picked(&mut builder)? {
        if stop.load(Ordering::Acquire) {
            anyhow::bail!("the history pass was stopped");
        }
    }
    Ok(builder.part)
}

struct Builder<'w> {
    from: u64,
    /// Whether typed records are needed with their JSON (for values).
    wants_json: bool,
    wanted: Wanted<'w>,
    /// `wanted` by name id.
    wanted_ids: Vec<bool>,
    part: Part,
    /// Name ids by `type \0 name` (`type \x01` without a name).
    ids: HashMap<String, u32>,
    /// A buffer for those keys.
    key: String,
}

impl Builder<'_> {
    fn index(&self, offset: u64) -> usize {
        (offset - self.from) as usize
    }

    /// Records the record at `offset` as an event of this type and name; whether its values
    /// are wanted.
    fn typed(&mut self, offset: u64, kind: &str, name: Option<&str>) -> bool {
        self.key.clear();
        self.key.push_str(kind);
        match name {
            Some(n) => {
                self.key.push('\0');
                self.key.push_str(n);
            }
            None => self.key.push('\x01'),
        }
        let id = match self.ids.get(self.key.as_str()) {
            Some(&id) => id,
            None => {
                let id = self.part.names.len() as u32;
                (self.part.names).push((kind.into(), name.map(Into::into)));
                self.ids.insert(self.key.clone(), id);
                (self.wanted_ids)
                    .push(self.wants_json && self.wanted.values.is_none_or(|w| w(kind, name)));
                id
            }
        };
        let i = self.index(offset);
        self.part.kinds[i] = id;
        self.wanted_ids[id as usize]
    }

    fn raw(&mut self, offset: u64, derived: bool, json: &[u8]) {
        let i = self.index(offset);
        self.part.kinds[i] = RAW | self.part.raws.len() as u32;
        self.part.raws.push(Raw {
            derived,
            json: json.to_vec(),
        });
    }
}

impl Pick for Builder<'_> {
    fn pick(&mut self, r: RecordRef<'_>) -> bool {
        if **r.source == *DERIVED_SOURCE {
            if !self.wanted.derived {
                let i = self.index(r.offset);
                self.part.kinds[i] = PRESENT;
            }
            return self.wanted.derived;
        }
        match junction_core::identity::type_and_name(r.identity) {
            Some((kind, name)) => self.typed(r.offset, kind.as_str(), name.as_deref()),
            None => true,
        }
    }

    fn visit(&mut self, r: RecordRef<'_>) {
        if **r.source == *DERIVED_SOURCE {
            return self.raw(r.offset, true, r.json);
        }
        let scanned = std::str::from_utf8(r.json)
            .ok()
            .and_then(|text| scan(text, &self.part.paths).ok());
        let Some(s) = scanned else {
            // The pass reads it as it always did (and counts it as bad).
            return self.raw(r.offset, false, r.json);
        };
        let wanted = match junction_core::identity::type_and_name(r.identity) {
            Some((kind, name)) => self.typed(r.offset, kind.as_str(), name.as_deref()),
            None => self.typed(
                r.offset,
                s.kind.as_deref().unwrap_or_default(),
                s.name.as_deref(),
            ),
        };
        if !wanted {
            return;
        }
        let at = self.index(r.offset) as u32;
        for (column, value) in self.part.values.iter_mut().zip(&s.values) {
            if let Some(v) = value {
                column.push((at, (*v).into()));
            }
        }
    }
}
