//! The proxy's configuration: the YAML model (a contract with outside tools), loading with
//! field-path errors, validation, and the immutable [`Snapshot`] the data path runs on.

mod cluster_model;
mod discovery;
mod discovery_model;
mod error;
mod load;
mod model;
mod overlay;
mod snapshot;
mod snapshot_reuse;
mod units;
mod validate;

pub use cluster_model::*;
pub use discovery_model::{HashOn, Locality, ServiceRegistration};
pub use error::{ConfigError, ConfigProblem};
pub use load::{LoadedConfig, SentModules, load_file, load_str};
pub use model::*;
pub use overlay::{filter_config, with_overlay};
pub use snapshot::{ListenerSnapshot, Snapshot};
pub use units::{ByteSize, ConfigDuration};
