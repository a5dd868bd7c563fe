//! What `sluice push`, `status`, `versions` and `rollback` do, apart from printing.

use std::path::PathBuf;
use std::time::Duration;

use sluice_control::proto::{
    ChangeRequest, Edit, ListVersionsReply, ListVersionsRequest, PromoteFilter, ProxyStatus,
    RemoveFilter, RollbackRequest, SetFilter, StatusReply, StatusRequest, UploadModuleRequest,
    edit,
};
use sluice_control::{Client, ConnectError};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The request was refused as invalid: nothing changed.
    #[error("refused: {0}")]
    Refused(String),
    #[error("the control service failed: {0}")]
    Failed(String),
    #[error("{0}")]
    NotAcknowledged(String),
}

impl CommandError {
    /// 2 for what the user must fix (bad module, bad config, unknown version), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Read { .. } | Self::Refused(_) => 2,
            _ => 1,
        }
    }
}

impl From<tonic::Status> for CommandError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::Unauthenticated => Self::Refused(status.message().to_owned()),
            code => Self::Failed(format!("{code}: {}", status.message())),
        }
    }
}

pub struct PushRequest {
    pub module: PathBuf,
    pub name: String,
    pub config: Option<String>,
    pub vm_config: Option<String>,
    /// `None`: every HTTP listener of every proxy.
    pub listener: Option<String>,
    /// `Some`: the chain of the route of that name instead of the listener's.
    pub route: Option<String>,
    pub fail_open: bool,
    /// Gradual rollout: run the module as a canary beside the filter, for this share of
    /// streams (0 to 100).
    pub canary_percent: Option<f64>,
    /// `service=NAME`, `label=K=V` or `proxy=ID`: only those proxies. `None`: every proxy.
    pub to: Option<String>,
}

pub struct Pushed {
    pub sha256: String,
    pub version: u64,
}

/// Uploads the module and sets the filter, as one new version.
pub async fn push(client: &mut Client, request: PushRequest) -> Result<Pushed, CommandError> {
    let module = std::fs::read(&request.module).map_err(|source| CommandError::Read {
        path: request.module.clone(),
        source,
    })?;
    let sha256 = client
        .upload_module(UploadModuleRequest { module })
        .await?
        .into_inner()
        .sha256;
    let set = SetFilter {
        name: request.name,
        module_sha256: sha256.clone(),
        config: request.config.unwrap_or_default(),
        listener: request.listener.unwrap_or_default(),
        fail_open: request.fail_open.then_some(true),
        vm_config: request.vm_config.unwrap_or_default(),
        position: None,
        canary_percent: request.canary_percent,
        route: request.route.unwrap_or_default(),
    };
    let version = change(client, edit::Edit::SetFilter(set), request.to).await?;
    Ok(Pushed { sha256, version })
}

/// Which filter on which chain: `None` listener means every HTTP listener; `Some` route means
/// the chain of the route of that name.
pub struct FilterTarget {
    pub name: String,
    pub listener: Option<String>,
    pub route: Option<String>,
    /// Only the proxies of this target (see [`PushRequest::to`]).
    pub to: Option<String>,
}

/// Ends a gradual rollout: the canary of the filter becomes the filter. Returns the version.
pub async fn promote(client: &mut Client, target: FilterTarget) -> Result<u64, CommandError> {
    let promote = PromoteFilter {
        name: target.name,
        listener: target.listener.unwrap_or_default(),
        route: target.route.unwrap_or_default(),
    };
    change(client, edit::Edit::PromoteFilter(promote), target.to).await
}

/// Takes the filter off its chain (a filter of the proxy's own file too). Returns the version.
pub async fn remove(client: &mut Client, target: FilterTarget) -> Result<u64, CommandError> {
    let remove = RemoveFilter {
        name: target.name,
        listener: target.listener.unwrap_or_default(),
        route: target.route.unwrap_or_default(),
    };
    change(client, edit::Edit::RemoveFilter(remove), target.to).await
}

async fn change(
    client: &mut Client,
    edit: edit::Edit,
    to: Option<String>,
) -> Result<u64, CommandError> {
    let change = ChangeRequest {
        edits: vec![Edit { edit: Some(edit) }],
        description: String::new(),
        to: to.unwrap_or_default(),
    };
    Ok(client.change(change).await?.into_inner().version)
}

pub async fn status(client: &mut Client) -> Result<StatusReply, CommandError> {
    Ok(client.status(StatusRequest {}).await?.into_inner())
}

pub async fn list_versions(client: &mut Client) -> Result<ListVersionsReply, CommandError> {
    Ok(client
        .list_versions(ListVersionsRequest {})
        .await?
        .into_inner())
}

/// Makes `to` current again, as a new version; returns that version. With `target`, only the
/// edits made for those proxies go back.
pub async fn rollback(
    client: &mut Client,
    to: u64,
    target: Option<String>,
) -> Result<u64, CommandError> {
    Ok(client
        .rollback(RollbackRequest {
            to_version: to,
            to: target.unwrap_or_default(),
        })
        .await?
        .into_inner()
        .version)
}

/// Waits until every connected proxy has applied or rejected `version` (or a later one).
/// Returns their statuses; `NotAcknowledged` if some did not within `timeout`.
pub async fn wait_for_acks(
    client: &mut Client,
    version: u64,
    timeout: Duration,
) -> Result<Vec<ProxyStatus>, CommandError> {
    let answered = |p: &ProxyStatus| p.applied_version >= version || p.rejected_version >= version;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let proxies: Vec<ProxyStatus> = status(client)
            .await?
            .proxies
            .into_iter()
            .filter(|p| p.connected)
            .collect();
        if proxies.iter().all(answered) {
            return Ok(proxies);
        }
        if tokio::time::Instant::now() >= deadline {
            let waiting: Vec<&str> = proxies
                .iter()
                .filter(|p| !answered(p))
                .map(|p| p.proxy_id.as_str())
                .collect();
            return Err(CommandError::NotAcknowledged(format!(
                "version {version}: no answer within {timeout:?} from {}",
                waiting.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
