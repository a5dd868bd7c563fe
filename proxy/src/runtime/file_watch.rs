//! File mode: a proxy started with `--config FILE` follows edits to FILE and to the module
//! files it names, and applies each settled change like any other config change (whole or
//! not at all). A broken edit is logged with its reason and the running config keeps serving.
//!
//! The folders are watched rather than the files: editors and deploy tools replace a file by
//! writing a new one and renaming it over the old, which a watch on the old file would miss.
//! A file renamed into place is whole the moment it appears, so it is read at once. Writes in
//! place come in bursts and may be half done, so they are read once things are quiet.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::apply::{ApplyError, ConfigApplier};
use crate::config::{self, LoadedConfig};

/// How long the files must stay quiet after a write in place before a change is read.
pub const SETTLE_TIME: Duration = Duration::from_millis(100);

/// Following a config file; dropping it stops following.
pub struct ConfigWatch {
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// The files a config depends on and the folders to watch for them.
#[derive(Default)]
struct WatchedFiles {
    files: HashSet<PathBuf>,
    folders: HashSet<PathBuf>,
    /// Folders holding a watched file that is a symlink. Its target changes without any event
    /// on the link itself (a Kubernetes ConfigMap volume renames a `..data` link beside it),
    /// so any rename in such a folder counts.
    linked: HashSet<PathBuf>,
}

// === impl ConfigWatch ===

impl ConfigWatch {
    /// Starts following `loaded.file` (the config the proxy runs) and its modules. Must be
    /// called inside a tokio runtime.
    pub fn start(applier: ConfigApplier, loaded: &LoadedConfig) -> Result<Self, WatchError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only when the watch is being dropped.
            let _ = events_tx.send(event);
        })
        .map_err(|source| WatchError {
            path: loaded.file.clone(),
            source,
        })?;
        let mut watched = WatchedFiles::default();
        watched.update(&mut watcher, loaded)?;
        let file = absolute(&loaded.file);
        tracing::info!(file = %file.display(), files = watched.files.len(), "watching the config and its modules for changes");
        let task = tokio::spawn(follow(applier, file, watcher, watched, events_rx));
        Ok(Self { task })
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(
    applier: ConfigApplier,
    file: PathBuf,
    mut watcher: notify::RecommendedWatcher,
    mut watched: WatchedFiles,
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
) {
    loop {
        let Some(change) = next_change(&mut events, &watched).await else {
            return;
        };
        // Let a burst of writes finish: every further change restarts the wait.
        if change == Change::Written && !settled(&mut events, &watched).await {
            return;
        }
        tracing::info!(file = %file.display(), "config or module changed; applying");
        let loaded = match config::load_file(&file) {
            Ok(loaded) => loaded,
            Err(error) => {
                applier.count_rejected(&ApplyError::Config(error));
                continue;
            }
        };
        if let Err(error) = watched.update(&mut watcher, &loaded) {
            tracing::warn!(%error, "edits to a newly named module will not be noticed");
        }
        // Logged and counted either way; a rejected change leaves the running config serving.
        let _ = applier.apply(loaded).await;
    }
}

/// Waits until no watched file changed for [`SETTLE_TIME`]; `false` if the watcher is gone.
async fn settled(
    events: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    watched: &WatchedFiles,
) -> bool {
    loop {
        match tokio::time::timeout(SETTLE_TIME, next_change(events, watched)).await {
            Ok(Some(_)) => continue,
            Ok(None) => return false,
            Err(_quiet) => return true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Renamed into place: complete.
    Replaced,
    /// Written, created or removed: maybe half done.
    Written,
}

/// Waits for an event that touches a watched file; `None` once the watcher is gone.
async fn next_change(
    events: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    watched: &WatchedFiles,
) -> Option<Change> {
    while let Some(event) = events.recv().await {
        match event {
            // A rename is reported as "from", "to", and then both paths together: "to" is
            // the one that says a watched file was replaced.
            Ok(event)
                if !matches!(
                    event.kind,
                    EventKind::Access(_) | EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                ) =>
            {
                if event.paths.iter().any(|path| watched.concerns(path)) {
                    let renamed = matches!(
                        event.kind,
                        EventKind::Modify(ModifyKind::Name(RenameMode::To))
                    );
                    return Some(if renamed {
                        Change::Replaced
                    } else {
                        Change::Written
                    });
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "file watch error"),
        }
    }
    None
}

// === impl WatchedFiles ===

impl WatchedFiles {
    /// Follows the files `loaded` depends on, adding watches for folders not watched yet.
    fn update(
        &mut self,
        watcher: &mut notify::RecommendedWatcher,
        loaded: &LoadedConfig,
    ) -> Result<(), WatchError> {
        let mut files = HashSet::from([absolute(&loaded.file)]);
        let modules = loaded
            .config
            .listeners
            .iter()
            .flat_map(|l| {
                l.filters
                    .iter()
                    .chain(l.routes.iter().flat_map(|r| &r.filters))
            })
            .flat_map(|filter| {
                let canary = filter.canary.as_ref().map(|c| &c.module);
                std::iter::once(&filter.module).chain(canary)
            })
            .filter(|module| !module.starts_with("sha256:"))
            .map(|module| absolute(&loaded.base_dir().join(module)));
        files.extend(modules);
        // Certificates, keys and CA bundles: a renewed certificate serves new handshakes.
        let tls_files = loaded
            .config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|tls| {
                tls.certificates
                    .iter()
                    .flat_map(|c| [&c.cert, &c.key])
                    .chain(tls.client_ca.as_ref())
            })
            .chain(
                loaded
                    .config
                    .clusters
                    .iter()
                    .filter_map(|c| c.tls.as_ref())
                    .flat_map(|tls| {
                        [tls.ca.as_ref(), tls.cert.as_ref(), tls.key.as_ref()]
                            .into_iter()
                            .flatten()
                    }),
            )
            .map(|path| absolute(&loaded.base_dir().join(path)));
        files.extend(tls_files);
        for folder in files.iter().filter_map(|file| file.parent()) {
            if self.folders.contains(folder) {
                continue;
            }
            watcher
                .watch(folder, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: folder.to_owned(),
                    source,
                })?;
            self.folders.insert(folder.to_owned());
        }
        self.linked = files
            .iter()
            .filter(|file| file.is_symlink())
            .filter_map(|file| file.parent().map(Path::to_owned))
            .collect();
        self.files = files;
        Ok(())
    }

    fn concerns(&self, path: &Path) -> bool {
        self.files.contains(path)
            || path
                .parent()
                .is_some_and(|folder| self.linked.contains(folder))
    }
}

/// The path as the watcher reports it: absolute, with `.` and `..` as written (no symlink
/// resolution, so a symlinked config is followed by its link's folder).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
