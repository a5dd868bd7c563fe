//! A control service's overlay laid over the config of the proxy's own file: the config the
//! proxy then runs. The result is validated like a file, and its problems name the overlay's
//! version so an operator knows the file is not to blame.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_control::{FilterAttachment, Overlay};

use super::error::{ConfigError, ConfigProblem};
use super::load::{LoadedConfig, SentModules};
use super::validate::validate;
use super::{CanaryConfig, ClusterConfig, FilterConfig, ListenerProtocol, RouteConfig};

/// `base` with `overlay` (control version `version`) applied; `modules` holds the modules the
/// overlay names.
pub fn with_overlay(
    base: &LoadedConfig,
    overlay: &Overlay,
    version: u64,
    modules: &Arc<SentModules>,
) -> Result<LoadedConfig, ConfigError> {
    let source = PathBuf::from(format!(
        "{} + control version {version}",
        base.file.display()
    ));
    let problem = |path: String, reason: String| ConfigError::Invalid {
        file: source.clone(),
        problems: vec![ConfigProblem { path, reason }],
    };
    let mut config = base.config.clone();

    config
        .clusters
        .retain(|c| !overlay.removed_clusters.contains(&c.name));
    for (index, cluster) in overlay.clusters.iter().enumerate() {
        let cluster: ClusterConfig = serde_json::from_value(cluster.clone())
            .map_err(|e| problem(format!("overlay.clusters[{index}]"), e.to_string()))?;
        match config.clusters.iter_mut().find(|c| c.name == cluster.name) {
            Some(existing) => *existing = cluster,
            None => config.clusters.push(cluster),
        }
    }

    for (index, routes) in overlay.routes.iter().enumerate() {
        let path = format!("overlay.routes[{index}]");
        let parsed: Vec<RouteConfig> = serde_json::from_value(routes.routes.clone())
            .map_err(|e| problem(path.clone(), e.to_string()))?;
        let listener = config
            .listeners
            .iter_mut()
            .find(|l| l.name == routes.listener)
            .ok_or_else(|| {
                problem(
                    path,
                    format!("this proxy has no listener {:?}", routes.listener),
                )
            })?;
        listener.routes = parsed;
    }

    for (index, attachment) in overlay.filters.iter().enumerate() {
        let path = format!("overlay.filters[{index}]");
        let mut matched = false;
        for listener in &mut config.listeners {
            let targeted = match &attachment.listener {
                Some(name) => *name == listener.name,
                None => listener.protocol == ListenerProtocol::Http,
            };
            if !targeted {
                continue;
            }
            let chain = match &attachment.route {
                None => Some(&mut listener.filters),
                Some(route) => listener
                    .routes
                    .iter_mut()
                    .find(|r| r.name.as_deref() == Some(route.as_str()))
                    .map(|r| &mut r.filters),
            };
            // A filter for a route goes wherever a route of that name is.
            let Some(chain) = chain else { continue };
            matched = true;
            attach(chain, attachment).map_err(|reason| {
                problem(
                    path.clone(),
                    format!("listener {:?}: {reason}", listener.name),
                )
            })?;
        }
        if !matched && (attachment.listener.is_some() || attachment.route.is_some()) {
            let wanted = match (&attachment.listener, &attachment.route) {
                (Some(listener), Some(route)) => {
                    format!("listener {listener:?} with a route named {route:?}")
                }
                (Some(listener), None) => format!("listener {listener:?}"),
                (None, _) => format!(
                    "HTTP listener with a route named {:?}",
                    attachment.route.as_deref().unwrap_or_default()
                ),
            };
            return Err(problem(
                path,
                format!("filter {:?}: this proxy has no {wanted}", attachment.name),
            ));
        }
    }

    validate(&config).map_err(|problems| ConfigError::Invalid {
        file: source.clone(),
        problems,
    })?;
    Ok(LoadedConfig {
        config,
        file: base.file.clone(),
        sent_modules: Arc::clone(modules),
        mesh: base.mesh.clone(),
    })
}

/// Sets or removes one filter on a chain. A filter set over one of the file's keeps the
/// file's limits, ids and log level.
fn attach(chain: &mut Vec<FilterConfig>, attachment: &FilterAttachment) -> Result<(), String> {
    let existing = chain.iter().position(|f| f.name == attachment.name);
    if attachment.removed {
        if let Some(index) = existing {
            chain.remove(index);
        }
        return Ok(());
    }
    if attachment.module_sha256.is_empty() {
        // Only a canary was pushed: it runs beside the chain's own filter.
        let own = existing.map(|index| &mut chain[index]).ok_or_else(|| {
            format!(
                "the canary of filter {:?} needs a filter of that name to run beside",
                attachment.name
            )
        })?;
        own.canary = canary_config(attachment);
        return Ok(());
    }
    let mut filter = filter_config(attachment);
    let index = match existing {
        Some(index) => {
            let old = chain.remove(index);
            filter.fail_open = attachment.fail_open.unwrap_or(old.fail_open);
            filter.limits = old.limits;
            filter.vm_id = old.vm_id;
            filter.root_id = old.root_id;
            filter.log_level = old.log_level;
            index
        }
        None => chain.len(),
    };
    let index = attachment
        .position
        .map_or(index, |p| (p as usize).min(chain.len()));
    chain.insert(index, filter);
    Ok(())
}

fn canary_config(attachment: &FilterAttachment) -> Option<CanaryConfig> {
    let text = |s: &str| (!s.is_empty()).then(|| serde_yaml::Value::String(s.to_owned()));
    attachment.canary.as_ref().map(|canary| CanaryConfig {
        module: format!("sha256:{}", canary.module_sha256),
        config: text(&canary.config),
        vm_config: text(&canary.vm_config),
        percent: canary.percent,
    })
}

/// The filter entry a control service's attachment stands for.
pub fn filter_config(attachment: &FilterAttachment) -> FilterConfig {
    let text = |s: &str| (!s.is_empty()).then(|| serde_yaml::Value::String(s.to_owned()));
    FilterConfig {
        name: attachment.name.clone(),
        module: format!("sha256:{}", attachment.module_sha256),
        config: text(&attachment.config),
        vm_config: text(&attachment.vm_config),
        fail_open: attachment.fail_open.unwrap_or(false),
        limits: None,
        vm_id: None,
        root_id: None,
        log_level: None,
        canary: canary_config(attachment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const BASE: &str = r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    filters:
      - { name: first, module: first.wasm, limits: { memory: 64MiB } }
      - { name: second, module: second.wasm }
    routes:
      - { match: { prefix: / }, cluster: app }
  - name: db
    address: 127.0.0.1:0
    protocol: tcp
    cluster: app
clusters:
  - { name: app, endpoints: ["127.0.0.1:1"] }
"#;

    fn base() -> LoadedConfig {
        load_str(BASE, std::path::Path::new("/etc/sluice/proxy.yaml")).unwrap()
    }

    fn set(name: &str, position: Option<u32>) -> FilterAttachment {
        FilterAttachment {
            name: name.into(),
            module_sha256: "ab".repeat(32),
            config: "cfg".into(),
            position,
            ..FilterAttachment::default()
        }
    }

    fn chain(config: &LoadedConfig) -> Vec<&str> {
        config.config.listeners[0]
            .filters
            .iter()
            .map(|f| f.name.as_str())
            .collect()
    }

    #[test]
    fn filters_replace_in_place_append_or_move_and_only_http_listeners_get_them() {
        let overlay = Overlay {
            filters: vec![
                set("first", None),
                set("third", None),
                set("zeroth", Some(0)),
            ],
            ..Overlay::default()
        };
        let composed = with_overlay(&base(), &overlay, 3, &Arc::default()).unwrap();
        assert_eq!(chain(&composed), ["zeroth", "first", "second", "third"]);
        let first = &composed.config.listeners[0].filters[1];
        assert_eq!(first.module, format!("sha256:{}", "ab".repeat(32)));
        assert!(first.limits.is_some(), "the file's limits stay");
        assert!(
            composed.config.listeners[1].filters.is_empty(),
            "tcp listeners are not HTTP chains"
        );
    }

    #[test]
    fn a_replaced_filter_keeps_its_fail_policy_unless_the_push_sets_one() {
        let mut base = base();
        base.config.listeners[0].filters[0].fail_open = true;
        let keep = Overlay {
            filters: vec![set("first", None)],
            ..Overlay::default()
        };
        let composed = with_overlay(&base, &keep, 1, &Arc::default()).unwrap();
        assert!(composed.config.listeners[0].filters[0].fail_open);
        let closed = Overlay {
            filters: vec![FilterAttachment {
                fail_open: Some(false),
                ..set("first", None)
            }],
            ..Overlay::default()
        };
        let composed = with_overlay(&base, &closed, 2, &Arc::default()).unwrap();
        assert!(!composed.config.listeners[0].filters[0].fail_open);
    }

    #[test]
    fn removals_take_out_filters_of_the_file_too() {
        let overlay = Overlay {
            filters: vec![FilterAttachment {
                name: "first".into(),
                removed: true,
                ..FilterAttachment::default()
            }],
            ..Overlay::default()
        };
        assert_eq!(
            chain(&with_overlay(&base(), &overlay, 1, &Arc::default()).unwrap()),
            ["second"]
        );
    }

    #[test]
    fn problems_name_the_overlay_version() {
        let overlay = Overlay {
            filters: vec![FilterAttachment {
                listener: Some("nope".into()),
                ..set("x", None)
            }],
            ..Overlay::default()
        };
        let error = with_overlay(&base(), &overlay, 7, &Arc::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            r#"/etc/sluice/proxy.yaml + control version 7: overlay.filters[0]: filter "x": this proxy has no listener "nope""#
        );

        let removes_used_cluster = Overlay {
            removed_clusters: vec!["app".into()],
            ..Overlay::default()
        };
        let error = with_overlay(&base(), &removes_used_cluster, 8, &Arc::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("control version 8"), "{error}");
        assert!(error.contains("unknown cluster \"app\""), "{error}");
    }

    #[test]
    fn filters_can_target_a_named_route() {
        let mut base = base();
        base.config.listeners[0].routes[0].name = Some("api".into());
        let overlay = Overlay {
            filters: vec![FilterAttachment {
                route: Some("api".into()),
                ..set("routed", None)
            }],
            ..Overlay::default()
        };
        let composed = with_overlay(&base, &overlay, 4, &Arc::default()).unwrap();
        let route = &composed.config.listeners[0].routes[0];
        assert_eq!(route.filters[0].name, "routed");
        assert_eq!(
            chain(&composed),
            ["first", "second"],
            "the listener chain is untouched"
        );

        let missing = Overlay {
            filters: vec![FilterAttachment {
                route: Some("nope".into()),
                ..set("routed", None)
            }],
            ..Overlay::default()
        };
        let error = with_overlay(&base, &missing, 5, &Arc::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(
                r#"filter "routed": this proxy has no HTTP listener with a route named "nope""#
            ),
            "{error}"
        );
    }

    #[test]
    fn clusters_and_routes_come_from_json_entries() {
        let overlay = Overlay {
            clusters: vec![serde_json::json!({"name": "canary", "endpoints": ["127.0.0.1:2"]})],
            routes: vec![sluice_control::ListenerRoutes {
                listener: "web".into(),
                routes: serde_json::json!([{"match": {"prefix": "/"}, "cluster": "canary"}]),
            }],
            ..Overlay::default()
        };
        let composed = with_overlay(&base(), &overlay, 2, &Arc::default()).unwrap();
        assert_eq!(composed.config.clusters.len(), 2);
        assert_eq!(
            composed.config.listeners[0].routes[0].cluster.as_deref(),
            Some("canary")
        );
    }
}
