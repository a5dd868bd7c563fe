//! The proxy's side of the control plane: validating changes for the control service (it
//! needs the Wasm host and the config model), subscribing to a control service, getting and
//! renewing the workload identity, and the `push`, `status`, `versions` and `rollback`
//! commands.

mod commands;
mod identity;
mod subscriber;
mod validator;

pub use commands::{
    CommandError, FilterTarget, PushRequest, Pushed, list_versions, promote, push, remove,
    rollback, status, wait_for_acks,
};
pub use identity::{IdentityError, IdentitySource};
pub use subscriber::{ControlSubscription, SubscriberSettings};
pub use validator::ProxyValidator;
