//! The proxy's configuration: the YAML model (a contract with outside tools), loading with
//! field-path errors, validation, and the immutable [`Snapshot`] the data path runs on.

mod error;
mod load;
mod model;
mod snapshot;
mod units;
mod validate;

pub use error::{ConfigError, ConfigProblem};
pub use load::{LoadedConfig, load_file, load_str};
pub use model::*;
pub use snapshot::{ListenerSnapshot, Snapshot};
pub use units::{ByteSize, ConfigDuration};
