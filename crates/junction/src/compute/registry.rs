//! The registry: the definitions of computed traits and audiences (config file and
//! management API) and the engines that compute them.
//!
//! Contract:
//! - Definitions of the config file are read-only through the API (`managed_by: "config"`:
//!   changing one is a [`ChangeError::ManagedByConfig`]). Those made through the API
//!   (`managed_by: "api"`) are kept in `<data_dir>/compute/definitions.json`, written
//!   atomically before a change is acknowledged, and loaded with the config file ([`load`]:
//!   both sets are checked together, and a clash stops the start, naming the file).
//! - A change is checked against every definition together (`Catalog::compile`: unknown
//!   function, wrong type, unknown audience, cycle, duplicate key); an invalid one changes
//!   nothing.
//! - One engine (a [`Compute`] and its thread) serves: reads, `/metrics`, `/ready` and the
//!   derived events. Each change starts a new engine over every definition in the
//!   background: it computes the history (the definitions the serving engine lacks show
//!   `computing N%`) and follows the timeline without writing; once caught up it stops the
//!   serving engine, reads what that one wrote until it stopped, writes what is missing and
//!   serves (see `live::run`). Real-time updates of the unchanged definitions go on meanwhile.
//!   A change made while one is pending replaces the pending engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use anyhow::Context;
use junction_core::compute::{DefKind, Definition, DefinitionError};
use serde::{Deserialize, Serialize};

use super::{Compute, Status, Worker, live};
use crate::clock::Clock;
use crate::config::{AudienceConfig, ComputedTraitConfig, Definitions, ManagedBy};
use crate::ingest::Ingestor;
use crate::unify::Unify;

/// Where the API's definitions are kept, under the data dir.
const STORE: &str = "compute/definitions.json";

/// The file of the API's definitions.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    #[serde(default)]
    computed_traits: Vec<ComputedTraitConfig>,
    #[serde(default)]
    audiences: Vec<AudienceConfig>,
}

/// The definitions of the config file together with those kept by the API in `data_dir`.
pub fn load(
    data_dir: &Path,
    mut computed_traits: Vec<ComputedTraitConfig>,
    mut audiences: Vec<AudienceConfig>,
) -> anyhow::Result<Definitions> {
    let path = data_dir.join(STORE);
    let stored = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Stored>(&bytes)
            .with_context(|| format!("invalid definitions file {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let config_only = Definitions::new(computed_traits.clone(), audiences.clone())
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    if stored.computed_traits.is_empty() && stored.audiences.is_empty() {
        return Ok(config_only);
    }
    computed_traits.extend(stored.computed_traits.into_iter().map(|mut t| {
        t.managed_by = ManagedBy::Api;
        t
    }));
    audiences.extend(stored.audiences.into_iter().map(|mut a| {
        a.managed_by = ManagedBy::Api;
        a
    }));
    Definitions::new(computed_traits, audiences).map_err(|e| {
        anyhow::anyhow!(
            "the definitions made through the API (in {}) clash with the config file: {e}",
            path.display()
        )
    })
}

/// Writes the API's definitions of `defs` to `data_dir`.
fn save(data_dir: &Path, defs: &Definitions) -> anyhow::Result<()> {
    let stored = Stored {
        version: 1,
        computed_traits: defs
            .computed_traits
            .iter()
            .filter(|t| t.managed_by == ManagedBy::Api)
            .cloned()
            .collect(),
        audiences: defs
            .audiences
            .iter()
            .filter(|a| a.managed_by == ManagedBy::Api)
            .cloned()
            .collect(),
    };
    let path = data_dir.join(STORE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let bytes = serde_json::to_vec_pretty(&stored).expect("definitions serialize");
    crate::fsutil::write_atomic(&path, &bytes)
}

/// A definition as the API creates or replaces it.
#[derive(Clone, Debug)]
pub struct NewDefinition {
    pub key: String,
    /// Audiences only: the display name (default: the key).
    pub name: Option<String>,
    pub expr: String,
    pub description: String,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no {0} with the key `{1}`")]
    NotFound(DefKind, String),
    #[error("a {0} with the key `{1}` exists already")]
    Exists(DefKind, String),
    #[error(
        "the {0} `{1}` is defined in the config file: change it there (the API changes only what it created)"
    )]
    ManagedByConfig(DefKind, String),
    #[error("{0}")]
    Invalid(#[from] DefinitionError),
    #[error("cannot save the definitions: {0:#}")]
    Storage(anyhow::Error),
}

/// A change to the definitions.
enum Change {
    Create(DefKind, NewDefinition),
    Replace(DefKind, NewDefinition),
    Delete(DefKind, String),
}

/// An engine: a computation of one set of definitions and its thread.
struct Engine {
    compute: Arc<Compute>,
    worker: Worker,
}

struct Engines {
    /// What is defined now (what the API lists).
    definitions: Arc<Definitions>,
    serving: Arc<Engine>,
    /// The engine computing the latest change, until it serves.
    pending: Option<Arc<Engine>>,
}

/// What the registry is made of at one moment, for readers (see [`Registry::snapshot`]).
#[derive(Clone)]
pub struct Snapshot {
    pub definitions: Arc<Definitions>,
    pub serving: Arc<Compute>,
    pub pending: Option<Arc<Compute>>,
}

impl Snapshot {
    /// One engine over `definitions`, nothing pending (offline reads).
    pub fn of(definitions: Arc<Definitions>, compute: Arc<Compute>) -> Snapshot {
        Snapshot {
            definitions,
            serving: compute,
            pending: None,
        }
    }

    /// The defined definitions, in catalog order.
    pub fn defined(&self) -> &[Definition] {
        self.definitions.catalog.definitions()
    }

    /// Who computes the definition `d` (one of [`Snapshot::defined`]): the serving engine
    /// when it has the same expression, else the pending one; with the definition's index
    /// there, and whether that engine serves.
    pub fn engine_for(&self, d: &Definition) -> Option<(&Compute, usize, bool)> {
        let index = |c: &Compute| {
            c.catalog()
                .definitions()
                .iter()
                .position(|x| x.kind == d.kind && x.key == d.key && x.expr == d.expr)
        };
        if let Some(i) = index(&self.serving) {
            return Some((&self.serving, i, true));
        }
        let pending = self.pending.as_deref()?;
        index(pending).map(|i| (pending, i, false))
    }

    /// The status of the definition `d`: its engine's, and `computing` while it does not
    /// serve yet.
    pub fn status(&self, d: &Definition) -> Status {
        match self.engine_for(d) {
            Some((c, _, true)) => c.status(),
            Some((c, _, false)) => match c.status() {
                Status::Ready => {
                    let applied = c.applied();
                    Status::Computing {
                        done: applied,
                        total: applied,
                    }
                }
                s => s,
            },
            None => Status::Computing { done: 0, total: 0 },
        }
    }
}

/// What every engine is built with.
struct Deps {
    clock: Arc<dyn Clock>,
    time_lag: Duration,
    unify: Arc<Unify>,
    ingestor: Arc<Ingestor>,
    limits: junction_core::event::Limits,
}

impl Deps {
    /// A new engine over `definitions`; with `takeover`, it computes in the background and
    /// takes over when caught up.
    fn engine(&self, definitions: &Definitions, takeover: Option<Weak<Registry>>) -> Arc<Engine> {
        let compute = Arc::new(Compute::new(
            definitions,
            Arc::clone(&self.clock),
            self.time_lag,
        ));
        let takeover = takeover.map(|registry| {
            Box::new(Takeover {
                registry,
                compute: Arc::downgrade(&compute),
            }) as Box<dyn live::Takeover>
        });
        let worker = live::spawn(
            Arc::clone(&compute),
            Arc::clone(&self.unify),
            Arc::clone(&self.ingestor),
            self.limits.clone(),
            takeover,
        );
        Arc::new(Engine { compute, worker })
    }
}

/// The shared handle (see the module docs).
pub struct Registry {
    data_dir: PathBuf,
    deps: Deps,
    engines: Mutex<Engines>,
    /// Held through a change, so that changes apply one after the other.
    changes: Mutex<()>,
}

impl Registry {
    /// Starts serving the definitions loaded with `config`.
    pub fn start(
        config: &crate::config::Config,
        clock: Arc<dyn Clock>,
        unify: Arc<Unify>,
        ingestor: Arc<Ingestor>,
    ) -> Arc<Registry> {
        let deps = Deps {
            clock,
            time_lag: config.compute_time_lag,
            unify,
            ingestor,
            limits: config.limits.clone(),
        };
        let serving = deps.engine(&config.definitions, None);
        Arc::new(Registry {
            data_dir: config.data_dir.clone(),
            deps,
            engines: Mutex::new(Engines {
                definitions: Arc::new(config.definitions.clone()),
                serving,
                pending: None,
            }),
            changes: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engines> {
        self.engines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The definitions and the engines, now.
    pub fn snapshot(&self) -> Snapshot {
        let engines = self.lock();
        Snapshot {
            definitions: Arc::clone(&engines.definitions),
            serving: Arc::clone(&engines.serving.compute),
            pending: engines.pending.as_ref().map(|e| Arc::clone(&e.compute)),
        }
    }

    /// The serving engine.
    pub fn serving(&self) -> Arc<Compute> {
        Arc::clone(&self.lock().serving.compute)
    }

    /// Creates a definition through the API.
    pub fn create(
        self: &Arc<Self>,
        kind: DefKind,
        def: NewDefinition,
    ) -> Result<Snapshot, ChangeError> {
        self.change(Change::Create(kind, def))
    }

    /// Replaces the expression, name and description of an API definition.
    pub fn replace(
        self: &Arc<Self>,
        kind: DefKind,
        def: NewDefinition,
    ) -> Result<Snapshot, ChangeError> {
        self.change(Change::Replace(kind, def))
    }

    /// Deletes an API definition.
    pub fn delete(self: &Arc<Self>, kind: DefKind, key: &str) -> Result<Snapshot, ChangeError> {
        self.change(Change::Delete(kind, key.to_string()))
    }

    fn change(self: &Arc<Self>, change: Change) -> Result<Snapshot, ChangeError> {
        let _serial = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let current = Arc::clone(&self.lock().definitions);
        let mut traits = current.computed_traits.clone();
        let mut audiences = current.audiences.clone();
        let (kind, key) = match &change {
            Change::Create(kind, d) | Change::Replace(kind, d) => (*kind, d.key.clone()),
            Change::Delete(kind, key) => (*kind, key.clone()),
        };
        match (current.managed_by(kind, &key), &change) {
            (Some(_), Change::Create(..)) => return Err(ChangeError::Exists(kind, key)),
            (None, Change::Replace(..) | Change::Delete(..)) => {
                return Err(ChangeError::NotFound(kind, key));
            }
            (Some(ManagedBy::Config), _) => return Err(ChangeError::ManagedByConfig(kind, key)),
            _ => {}
        }
        match change {
            Change::Create(DefKind::ComputedTrait, d) => traits.push(trait_config(d)),
            Change::Create(DefKind::Audience, d) => audiences.push(audience_config(d)),
            Change::Replace(DefKind::ComputedTrait, d) => {
                if let Some(t) = traits.iter_mut().find(|t| t.key == key) {
                    *t = trait_config(d);
                }
            }
            Change::Replace(DefKind::Audience, d) => {
                if let Some(a) = audiences.iter_mut().find(|a| a.key == key) {
                    *a = audience_config(d);
                }
            }
            Change::Delete(DefKind::ComputedTrait, _) => traits.retain(|t| t.key != key),
            Change::Delete(DefKind::Audience, _) => audiences.retain(|a| a.key != key),
        }
        let definitions = Definitions::new(traits, audiences)?;
        save(&self.data_dir, &definitions).map_err(ChangeError::Storage)?;
        let engine = self.deps.engine(&definitions, Some(Arc::downgrade(self)));
        let replaced = {
            let mut engines = self.lock();
            engines.definitions = Arc::new(definitions);
            engines.pending.replace(engine)
        };
        // Outside the lock: the replaced engine's thread may be waiting for it to take over.
        if let Some(old) = replaced {
            old.worker.stop();
        }
        Ok(self.snapshot())
    }

    /// Stops every engine (at shutdown).
    pub fn stop(&self) {
        let (pending, serving) = {
            let mut engines = self.lock();
            (engines.pending.take(), Arc::clone(&engines.serving))
        };
        if let Some(p) = pending {
            p.worker.stop();
        }
        serving.worker.stop();
    }
}

fn trait_config(d: NewDefinition) -> ComputedTraitConfig {
    ComputedTraitConfig {
        key: d.key,
        expr: d.expr,
        description: d.description,
        managed_by: ManagedBy::Api,
    }
}

fn audience_config(d: NewDefinition) -> AudienceConfig {
    AudienceConfig {
        key: d.key,
        name: d.name,
        expr: d.expr,
        description: d.description,
        managed_by: ManagedBy::Api,
    }
}

/// How a pending engine takes over from the serving one.
struct Takeover {
    registry: Weak<Registry>,
    compute: Weak<Compute>,
}

impl Takeover {
    fn is(&self, engine: &Engine) -> bool {
        std::ptr::eq(Arc::as_ptr(&engine.compute), self.compute.as_ptr())
    }
}

impl live::Takeover for Takeover {
    fn retire_serving(&self) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let serving = Arc::clone(&registry.lock().serving);
        if !self.is(&serving) {
            serving.worker.stop();
        }
    }

    fn serve(&self) -> bool {
        let Some(registry) = self.registry.upgrade() else {
            return false;
        };
        let mut engines = registry.lock();
        if !engines.pending.as_deref().is_some_and(|p| self.is(p)) {
            return false;
        }
        let pending = engines.pending.take().expect("checked above");
        let retired = std::mem::replace(&mut engines.serving, pending);
        drop(engines);
        // Its thread was stopped by `retire_serving`.
        drop(retired);
        true
    }
}
