//! Changes and rollbacks: each becomes the next version. The edits are checked once (modules
//! compile and accept their configuration, clusters and routes are well-formed), then
//! applied to the current version and appended. When another replica appended first, the
//! edits are applied again to the version it wrote and appended after it, a few times at
//! most, so no replica's change is lost or applied to a stale base.

use std::sync::Arc;

use tonic::Status;

use super::ControlService;
use crate::overlay::{FilterAttachment, Overlay, describe};
use crate::proto::edit::Edit as EditKind;
use crate::proto::{ChangeRequest, RollbackRequest};
use crate::store::AppendError;
use crate::targets::Target;

/// How many times a change is applied again after losing the race for the next version.
const ATTEMPTS: usize = 5;

// === impl ControlService (changes) ===

impl ControlService {
    /// Applies `request`'s edits as the next version; returns its number.
    pub(super) async fn apply_change(&self, request: ChangeRequest) -> Result<u64, Status> {
        if request.edits.is_empty() {
            return Err(Status::invalid_argument("a change needs at least one edit"));
        }
        let target = target_of(&request.to)?;
        let _turn = self.shared.changing.lock().await;
        let edit = |current: &Overlay| {
            let invalid = |e: crate::overlay::EditError| Status::invalid_argument(e.to_string());
            match &target {
                None => current.edited(&request.edits).map_err(invalid),
                Some(target) => {
                    let edited = current
                        .for_target(target)
                        .edited(&request.edits)
                        .map_err(invalid)?;
                    Ok(current.with_target(target, edited))
                }
            }
        };
        // Edits that do not apply are refused before anything is compiled.
        edit(&self.shared.store.versions().current().overlay)?;
        self.validate(&request.edits).await?;
        let description = match (request.description.as_str(), &target) {
            ("", None) => describe(&request.edits),
            ("", Some(target)) => format!("{} (for {target})", describe(&request.edits)),
            (text, _) => text.to_owned(),
        };
        self.append_edited(&description, |current| edit(current))
            .await
    }

    /// Makes the config of version `to_version` (for all proxies, or for the target's
    /// edits only) the next version.
    pub(super) async fn apply_rollback(&self, request: RollbackRequest) -> Result<u64, Status> {
        let (to, target) = (request.to_version, target_of(&request.to)?);
        let _turn = self.shared.changing.lock().await;
        let versions = self.shared.store.versions();
        let then = match to {
            0 => Overlay::default(),
            _ => versions
                .version(to)
                .map(|v| v.overlay)
                .ok_or_else(|| Status::not_found(format!("there is no version {to}")))?,
        };
        let description = match &target {
            None => format!("rollback to version {to}"),
            Some(target) => format!("rollback of the edits for {target} to version {to}"),
        };
        self.append_edited(&description, |current| {
            Ok(match &target {
                None => then.clone(),
                Some(target) => current.with_target(target, then.for_target(target)),
            })
        })
        .await
    }

    /// Appends `edit(current)` after the current version, again on top of whatever another
    /// replica appended meanwhile.
    async fn append_edited(
        &self,
        description: &str,
        edit: impl Fn(&Overlay) -> Result<Overlay, Status>,
    ) -> Result<u64, Status> {
        let store = &self.shared.store;
        for _ in 0..ATTEMPTS {
            let current = store.versions().current();
            let next = edit(&current.overlay)?;
            match store
                .append(current.version, next, description.to_owned())
                .await
            {
                Ok(record) => return Ok(record.version),
                Err(AppendError::Taken(version)) => {
                    tracing::info!(
                        version,
                        "another replica took the next version; applying the change again on top of it"
                    );
                }
                Err(AppendError::Store(error)) => return Err(super::store_failed(error)),
            }
        }
        Err(Status::aborted(format!(
            "other replicas took the next version {ATTEMPTS} times in a row; nothing was changed, try again"
        )))
    }

    /// Checks what `edits` set: modules, clusters, routes.
    async fn validate(&self, edits: &[crate::proto::Edit]) -> Result<(), Status> {
        for (index, edit) in edits.iter().enumerate() {
            let invalid =
                |reason: String| Status::invalid_argument(format!("edits[{index}]: {reason}"));
            let validator = Arc::clone(&self.shared.validator);
            let checked = match &edit.edit {
                Some(EditKind::SetFilter(set)) => {
                    let module = self
                        .shared
                        .store
                        .module(&set.module_sha256)
                        .await
                        .map_err(super::store_failed)?
                        .ok_or_else(|| {
                            Status::failed_precondition(format!(
                                "edits[{index}]: module sha256:{} is not uploaded; upload it first",
                                set.module_sha256
                            ))
                        })?;
                    // What the edit sets, whether it becomes the filter or its canary.
                    let filter = FilterAttachment {
                        name: set.name.clone(),
                        module_sha256: set.module_sha256.clone(),
                        config: set.config.clone(),
                        vm_config: set.vm_config.clone(),
                        fail_open: set.fail_open,
                        ..FilterAttachment::default()
                    };
                    // Compiling and canarying take milliseconds to seconds.
                    tokio::task::spawn_blocking(move || validator.validate_filter(&filter, &module))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(|reason| format!("filter {:?}: {reason}", set.name))
                }
                Some(EditKind::SetCluster(set)) => serde_json::from_str(&set.cluster_json)
                    .map_err(|e| e.to_string())
                    .and_then(|cluster| validator.validate_cluster(&cluster))
                    .map_err(|reason| format!("set_cluster: {reason}")),
                Some(EditKind::SetRoutes(set)) => serde_json::from_str(&set.routes_json)
                    .map_err(|e| e.to_string())
                    .and_then(|routes| validator.validate_routes(&routes))
                    .map_err(|reason| format!("set_routes ({}): {reason}", set.listener)),
                _ => Ok(()),
            };
            checked.map_err(invalid)?;
        }
        Ok(())
    }
}

/// Parses a request's `to`: refused with the reason when it is not a target.
fn target_of(text: &str) -> Result<Option<Target>, Status> {
    Target::parse(text).map_err(Status::invalid_argument)
}
