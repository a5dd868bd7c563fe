//! The overlay: what the control service has changed in the mesh, as one document per
//! version. A proxy lays it over the config of its own file: filters set or removed on
//! listener chains, clusters added, replaced or removed, and listener routes replaced.
//!
//! Edits build the next overlay from the current one; the overlay itself is cumulative, so a
//! proxy that reconnects needs only the newest version.

use serde::{Deserialize, Serialize};

use crate::proto::{self, edit::Edit as EditKind};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Applied in order, each to the chains it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterAttachment>,
    /// Whole `clusters:` entries (JSON), replacing a cluster of the same name or added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ListenerRoutes>,
    /// Edits for some proxies only (`--to`), laid over the rest for the proxies they match.
    /// A proxy receives its own effective overlay, where this is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targeted: Vec<crate::targets::TargetedOverlay>,
}

/// Filter `name` set on (or removed from) one listener's chain, or every HTTP listener's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterAttachment {
    pub name: String,
    /// `None`: every HTTP listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// `Some`: the chain of the route of that name, not the listener's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Removes the filter (one from the file too) instead of setting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub module_sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm_config: String,
    /// `None`: as the filter it replaces has it (false for a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_open: Option<bool>,
    /// Index in the chain; by default a filter keeps its place or goes last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// A canary beside the filter. With an empty `module_sha256`, the filter it runs beside
    /// is the chain's own (from the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryAttachment>,
}

/// The candidate version of a filter during a gradual rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryAttachment {
    pub module_sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm_config: String,
    /// 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerRoutes {
    pub listener: String,
    /// A JSON array of `routes:` entries.
    pub routes: serde_json::Value,
}

/// An edit that cannot apply, with the edit's index.
#[derive(Debug, thiserror::Error)]
#[error("edits[{index}]: {reason}")]
pub struct EditError {
    pub index: usize,
    pub reason: String,
}

// === impl Overlay ===

impl Overlay {
    /// The overlay after `edits`, in order. Checks shapes only; a proxy checks the result
    /// against its own config when it applies it.
    pub fn edited(&self, edits: &[proto::Edit]) -> Result<Self, EditError> {
        let mut next = self.clone();
        for (index, edit) in edits.iter().enumerate() {
            let error = |reason: String| EditError { index, reason };
            match &edit.edit {
                None => return Err(error("empty edit".into())),
                Some(EditKind::SetFilter(set)) => {
                    if set.name.is_empty() {
                        return Err(error("set_filter.name is empty".into()));
                    }
                    if !is_sha256(&set.module_sha256) {
                        return Err(error(format!(
                            "set_filter.module_sha256 {:?} is not a sha256 in hex",
                            set.module_sha256
                        )));
                    }
                    match set.canary_percent {
                        Some(percent) => {
                            if !(0.0..=100.0).contains(&percent) {
                                return Err(error(format!(
                                    "set_filter.canary_percent must be from 0 to 100, not {percent}"
                                )));
                            }
                            next.put_canary(set, percent);
                        }
                        None => next.put_filter(FilterAttachment {
                            name: set.name.clone(),
                            listener: non_empty(&set.listener),
                            route: non_empty(&set.route),
                            removed: false,
                            module_sha256: set.module_sha256.to_ascii_lowercase(),
                            config: set.config.clone(),
                            vm_config: set.vm_config.clone(),
                            fail_open: set.fail_open,
                            position: set.position,
                            canary: None,
                        }),
                    }
                }
                Some(EditKind::PromoteFilter(promote)) => {
                    let (listener, route) =
                        (non_empty(&promote.listener), non_empty(&promote.route));
                    let attachment = next
                        .filters
                        .iter_mut()
                        .find(|f| {
                            f.name == promote.name && f.listener == listener && f.route == route
                        })
                        .filter(|f| f.canary.is_some())
                        .ok_or_else(|| {
                            error(format!(
                                "filter {:?} on {} has no canary to promote",
                                promote.name,
                                chain_label(&promote.listener, &promote.route)
                            ))
                        })?;
                    if let Some(canary) = attachment.canary.take() {
                        attachment.module_sha256 = canary.module_sha256;
                        attachment.config = canary.config;
                        attachment.vm_config = canary.vm_config;
                    }
                }
                Some(EditKind::RemoveFilter(remove)) => {
                    if remove.name.is_empty() {
                        return Err(error("remove_filter.name is empty".into()));
                    }
                    next.put_filter(FilterAttachment {
                        name: remove.name.clone(),
                        listener: non_empty(&remove.listener),
                        route: non_empty(&remove.route),
                        removed: true,
                        ..FilterAttachment::default()
                    });
                }
                Some(EditKind::SetCluster(set)) => {
                    let cluster: serde_json::Value = serde_json::from_str(&set.cluster_json)
                        .map_err(|e| error(format!("set_cluster.cluster_json: {e}")))?;
                    let name = cluster_name(&cluster)
                        .ok_or_else(|| {
                            error("set_cluster.cluster_json has no string `name`".into())
                        })?
                        .to_owned();
                    next.clusters
                        .retain(|c| cluster_name(c) != Some(name.as_str()));
                    next.removed_clusters.retain(|n| *n != name);
                    next.clusters.push(cluster);
                }
                Some(EditKind::RemoveCluster(remove)) => {
                    let name = &remove.name;
                    next.clusters
                        .retain(|c| cluster_name(c) != Some(name.as_str()));
                    if !next.removed_clusters.contains(name) {
                        next.removed_clusters.push(name.clone());
                    }
                }
                Some(EditKind::SetRoutes(set)) => {
                    let routes: serde_json::Value = serde_json::from_str(&set.routes_json)
                        .map_err(|e| error(format!("set_routes.routes_json: {e}")))?;
                    if !routes.is_array() {
                        return Err(error("set_routes.routes_json is not a JSON array".into()));
                    }
                    next.routes.retain(|r| r.listener != set.listener);
                    next.routes.push(ListenerRoutes {
                        listener: set.listener.clone(),
                        routes,
                    });
                }
            }
        }
        Ok(next)
    }

    /// The modules the overlay's filters (and canaries) use, targeted ones included.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        let targeted = self.targeted.iter().flat_map(|t| t.overlay.filters.iter());
        self.filters
            .iter()
            .chain(targeted)
            .filter(|f| !f.removed)
            .flat_map(|f| {
                let canary = f.canary.as_ref().map(|c| c.module_sha256.as_str());
                std::iter::once(f.module_sha256.as_str()).chain(canary)
            })
            .filter(|digest| !digest.is_empty())
    }

    /// Puts a canary beside the filter of the same name and listener: one set earlier, or
    /// (with no module of its own) the chain's own filter.
    fn put_canary(&mut self, set: &proto::SetFilter, percent: f64) {
        let canary = CanaryAttachment {
            module_sha256: set.module_sha256.to_ascii_lowercase(),
            config: set.config.clone(),
            vm_config: set.vm_config.clone(),
            percent,
        };
        let (listener, route) = (non_empty(&set.listener), non_empty(&set.route));
        match self.filters.iter_mut().find(|f| {
            f.name == set.name && f.listener == listener && f.route == route && !f.removed
        }) {
            Some(existing) => existing.canary = Some(canary),
            None => self.filters.push(FilterAttachment {
                name: set.name.clone(),
                listener,
                route,
                canary: Some(canary),
                ..FilterAttachment::default()
            }),
        }
    }

    /// Replaces the attachment for the same filter and listener in place, or adds it last.
    fn put_filter(&mut self, attachment: FilterAttachment) {
        let same = |f: &FilterAttachment| {
            f.name == attachment.name
                && f.listener == attachment.listener
                && f.route == attachment.route
        };
        match self.filters.iter_mut().find(|f| same(f)) {
            Some(existing) => *existing = attachment,
            None => self.filters.push(attachment),
        }
    }
}

/// A short summary of edits for the version list.
pub fn describe(edits: &[proto::Edit]) -> String {
    let each: Vec<String> = edits
        .iter()
        .filter_map(|edit| edit.edit.as_ref())
        .map(|edit| match edit {
            EditKind::SetFilter(set) => match set.canary_percent {
                Some(percent) => format!(
                    "canary {percent}% of filter {} (sha256:{}) on {}",
                    set.name,
                    &set.module_sha256[..set.module_sha256.len().min(12)],
                    chain_label(&set.listener, &set.route)
                ),
                None => format!(
                    "set filter {} (sha256:{}) on {}",
                    set.name,
                    &set.module_sha256[..set.module_sha256.len().min(12)],
                    chain_label(&set.listener, &set.route)
                ),
            },
            EditKind::PromoteFilter(promote) => format!(
                "promote the canary of filter {} on {}",
                promote.name,
                chain_label(&promote.listener, &promote.route)
            ),
            EditKind::RemoveFilter(remove) => format!(
                "remove filter {} from {}",
                remove.name,
                chain_label(&remove.listener, &remove.route)
            ),
            EditKind::SetCluster(_) => "set a cluster".to_owned(),
            EditKind::RemoveCluster(remove) => format!("remove cluster {}", remove.name),
            EditKind::SetRoutes(set) => format!("set routes of listener {}", set.listener),
        })
        .collect();
    each.join("; ")
}

fn chain_label(listener: &str, route: &str) -> String {
    let listener = if listener.is_empty() {
        "every HTTP listener".to_owned()
    } else {
        format!("listener {listener}")
    };
    if route.is_empty() {
        listener
    } else {
        format!("route {route} of {listener}")
    }
}

pub fn cluster_name(cluster: &serde_json::Value) -> Option<&str> {
    cluster.get("name").and_then(serde_json::Value::as_str)
}

pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Edit, RemoveFilter, SetCluster, SetFilter};

    fn set_filter(name: &str, listener: &str, config: &str) -> Edit {
        Edit {
            edit: Some(EditKind::SetFilter(SetFilter {
                name: name.into(),
                module_sha256: "ab".repeat(32),
                config: config.into(),
                listener: listener.into(),
                ..SetFilter::default()
            })),
        }
    }

    #[test]
    fn setting_a_filter_again_replaces_it_in_place() {
        let overlay = Overlay::default()
            .edited(&[set_filter("authz", "", "a"), set_filter("metrics", "", "m")])
            .unwrap()
            .edited(&[set_filter("authz", "", "b")])
            .unwrap();
        let names: Vec<_> = overlay
            .filters
            .iter()
            .map(|f| (f.name.as_str(), f.config.as_str()))
            .collect();
        assert_eq!(names, [("authz", "b"), ("metrics", "m")]);
        // Another listener is another attachment.
        let overlay = overlay.edited(&[set_filter("authz", "edge", "c")]).unwrap();
        assert_eq!(overlay.filters.len(), 3);
    }

    #[test]
    fn removal_is_recorded_so_it_also_removes_a_filter_from_the_file() {
        let remove = Edit {
            edit: Some(EditKind::RemoveFilter(RemoveFilter {
                name: "authz".into(),
                ..RemoveFilter::default()
            })),
        };
        let overlay = Overlay::default()
            .edited(&[set_filter("authz", "", "a"), remove])
            .unwrap();
        assert_eq!(overlay.filters.len(), 1);
        assert!(overlay.filters[0].removed);
        assert_eq!(overlay.modules().count(), 0);
    }

    #[test]
    fn bad_edits_name_their_index_and_field() {
        let bad_module = Edit {
            edit: Some(EditKind::SetFilter(SetFilter {
                name: "authz".into(),
                module_sha256: "not-a-digest".into(),
                ..SetFilter::default()
            })),
        };
        let error = Overlay::default()
            .edited(&[set_filter("ok", "", ""), bad_module])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"edits[1]: set_filter.module_sha256 "not-a-digest" is not a sha256 in hex"#
        );
        let nameless = Edit {
            edit: Some(EditKind::SetCluster(SetCluster {
                cluster_json: r#"{"endpoints": []}"#.into(),
            })),
        };
        let error = Overlay::default().edited(&[nameless]).unwrap_err();
        assert!(error.to_string().contains("no string `name`"), "{error}");
    }

    #[test]
    fn a_cluster_set_again_replaces_the_old_entry() {
        let set = |json: &str| Edit {
            edit: Some(EditKind::SetCluster(SetCluster {
                cluster_json: json.into(),
            })),
        };
        let overlay = Overlay::default()
            .edited(&[
                set(r#"{"name": "a", "endpoints": ["127.0.0.1:1"]}"#),
                set(r#"{"name": "a", "endpoints": ["127.0.0.1:2"]}"#),
            ])
            .unwrap();
        assert_eq!(overlay.clusters.len(), 1);
        assert_eq!(overlay.clusters[0]["endpoints"][0], "127.0.0.1:2");
    }
}
