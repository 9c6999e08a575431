//! The Azure Blob Storage backend, on `azure_storage_blobs`.
//!
//! The SDK's own retries are disabled: the cache retries with its own
//! backoff and time limits, and needs to see every failure. Every error
//! response is turned into a [`StorageError`] here, keeping what the caller
//! needs to decide (status, service error code, `Retry-After`).
//!
//! Directory markers follow the blobfuse2 layout: an empty blob whose
//! metadata holds `hdi_isfolder=true`.

use super::{
    BlobProperties, BlobStore, BlockId, CommittedBlock, Condition, ETag, ListedBlob, Listing, StorageError,
    StorageResult,
};
use async_trait::async_trait;
use azure_core::error::{ErrorKind, HttpError};
use azure_core::headers::{HeaderName, Headers};
use azure_core::prelude::{IfMatchCondition, MaxResults, Metadata, Range};
use azure_core::{ClientOptions, Context, Policy, PolicyResult, Request, RetryOptions, Url};
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::blob::{BlobBlockType, BlockList, BlockListType, CopyStatus};
use azure_storage_blobs::container::operations::BlobItem;
use azure_storage_blobs::prelude::{BlobClient, ClientBuilder, ContainerClient, DeleteSnapshotsMethod};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Metadata that marks a directory (as blobfuse2 writes it).
const DIR_MARKER_KEY: &str = "hdi_isfolder";
const CHECK_ACCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureSettings {
    pub account: String,
    pub container: String,
    /// Blob service URL of the account, e.g. `http://127.0.0.1:10000/devstoreaccount1`
    /// for Azurite; `https://ACCOUNT.blob.core.windows.net` when `None`.
    pub endpoint: Option<String>,
    pub credentials: AzureCredentials,
}

/// Credentials for the account.
#[derive(Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// A storage account key (base64).
    AccountKey(String),
    /// A shared access signature query string, with or without the leading `?`.
    Sas(String),
}

impl std::fmt::Debug for AzureCredentials {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AzureCredentials::AccountKey(_) => f.write_str("AccountKey(..)"),
            AzureCredentials::Sas(_) => f.write_str("Sas(..)"),
        }
    }
}

/// A container in Azure Blob Storage (or Azurite).
#[derive(Debug)]
pub struct AzureStore {
    container: ContainerClient,
    container_name: String,
    endpoint: String,
    /// Appended to copy sources: with SAS credentials the source of a copy
    /// must carry its own authorisation.
    sas: Option<String>,
}

/// An unsuccessful response, with what the error mapping needs.
#[derive(Debug)]
struct ServiceError {
    status: u16,
    code: Option<String>,
    message: Option<String>,
    retry_after: Option<Duration>,
    request_id: Option<String>,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            // Service messages span lines with request ids and times.
            let first = message.lines().next().unwrap_or_default();
            write!(f, ": {first}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceError {}

/// Turns every unsuccessful response into an error carrying a
/// [`ServiceError`]; it sits right before the transport, where the response
/// headers (and so `Retry-After`) are still available.
#[derive(Debug)]
struct ResponseErrorPolicy;

fn header(headers: &Headers, name: &'static str) -> Option<String> {
    headers.get_optional_string(&HeaderName::from_static(name))
}

fn retry_after(headers: &Headers) -> Option<Duration> {
    if let Some(ms) = header(headers, "x-ms-retry-after-ms").and_then(|v| v.trim().parse().ok()) {
        return Some(Duration::from_millis(ms));
    }
    // Only the delta-seconds form: Azure does not send dates here.
    header(headers, "retry-after")
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs)
}

#[async_trait]
impl Policy for ResponseErrorPolicy {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let Some((transport, rest)) = next.split_first() else {
            return Err(azure_core::Error::message(
                ErrorKind::Other,
                "no transport after the response error policy",
            ));
        };
        let response = transport.send(ctx, request, rest).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers();
        let retry_after = retry_after(headers);
        let request_id = header(headers, "x-ms-request-id");
        let http_error = HttpError::new(response).await;
        let error = ServiceError {
            status: u16::from(status),
            code: http_error.error_code().map(str::to_owned),
            message: http_error.error_message().map(str::to_owned),
            retry_after,
            request_id,
        };
        Err(azure_core::Error::new(
            ErrorKind::http_response(status, error.code.clone()),
            error,
        ))
    }
}

/// Hides SAS signatures, which transport errors print as part of the URL.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        out.push_str("sig=REDACTED");
        let value = after.get(4..).unwrap_or_default();
        let end = value
            .find(|c: char| c == '&' || c == ')' || c.is_whitespace())
            .unwrap_or(value.len());
        rest = value.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// The messages of an error and of its sources, which is where the cause of
/// a connection failure is.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    redact(&text)
}

fn quoted(etag: &str) -> ETag {
    // Listings give ETags without the quotes that headers have.
    if etag.starts_with('"') {
        ETag(etag.to_owned())
    } else {
        ETag(format!("\"{etag}\""))
    }
}

fn is_dir_marker(metadata: Option<&std::collections::HashMap<String, String>>) -> bool {
    metadata.is_some_and(|m| {
        m.iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(DIR_MARKER_KEY) && v.eq_ignore_ascii_case("true"))
    })
}

fn properties_of(blob: &azure_storage_blobs::blob::Blob) -> BlobProperties {
    BlobProperties {
        size: blob.properties.content_length,
        etag: quoted(blob.properties.etag.as_ref()),
        last_modified: SystemTime::from(blob.properties.last_modified),
        is_dir_marker: is_dir_marker(blob.metadata.as_ref()),
    }
}

fn if_match(condition: &Condition) -> Option<IfMatchCondition> {
    match condition {
        Condition::None => None,
        Condition::IfMatch(etag) => Some(IfMatchCondition::Match(etag.0.clone())),
        Condition::IfNotExists => Some(IfMatchCondition::NotMatch("*".to_owned())),
    }
}

fn check_ids(name: &str, blocks: &[BlockId]) -> StorageResult<()> {
    let first_len = blocks.first().map(|id| id.0.len());
    for id in blocks {
        super::check_block_id(id)?;
        if Some(id.0.len()) != first_len {
            return Err(StorageError::Invalid(format!(
                "block ids of different lengths ({} and {}) for {name}",
                first_len.unwrap_or_default(),
                id.0.len()
            )));
        }
    }
    Ok(())
}

/// Checks the container name against Azure's rules, so that a typo fails
/// with an explanation instead of an opaque 400.
fn check_container_name(name: &str) -> StorageResult<()> {
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid || name == "$root" {
        Ok(())
    } else {
        Err(StorageError::Invalid(format!(
            "invalid container name {name:?}: use 3 to 63 lowercase letters, digits and single hyphens"
        )))
    }
}

impl AzureStore {
    pub fn new(settings: AzureSettings) -> StorageResult<AzureStore> {
        let AzureSettings {
            account,
            container,
            endpoint,
            credentials,
        } = settings;
        if account.is_empty() {
            return Err(StorageError::Invalid("the storage account name is empty".into()));
        }
        check_container_name(&container)?;
        let (credentials, sas) = match credentials {
            AzureCredentials::AccountKey(key) => {
                use base64::Engine as _;
                let key = key.trim().to_owned();
                if base64::engine::general_purpose::STANDARD.decode(&key).is_err() {
                    return Err(StorageError::Invalid(
                        "the storage account key is not valid base64".into(),
                    ));
                }
                (StorageCredentials::access_key(account.clone(), key), None)
            }
            AzureCredentials::Sas(token) => {
                let token = token.trim().trim_start_matches('?').to_owned();
                let credentials = StorageCredentials::sas_token(&token)
                    .map_err(|e| StorageError::Invalid(format!("the SAS token cannot be parsed: {e}")))?;
                (credentials, Some(token))
            }
        };
        let (location, endpoint) = match endpoint {
            None => (
                CloudLocation::Public {
                    account: account.clone(),
                },
                format!("https://{account}.blob.core.windows.net"),
            ),
            Some(uri) => {
                let uri = uri.trim().trim_end_matches('/').to_owned();
                let parsed = Url::parse(&uri)
                    .map_err(|e| StorageError::Invalid(format!("invalid storage endpoint {uri:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                    return Err(StorageError::Invalid(format!(
                        "invalid storage endpoint {uri:?}: expected http(s)://host[:port][/path] \
                         without a query (give a SAS token as credentials)"
                    )));
                }
                (
                    CloudLocation::Custom {
                        account: account.clone(),
                        uri: uri.clone(),
                    },
                    uri,
                )
            }
        };
        let options = ClientOptions::default()
            .retry(RetryOptions::none())
            .per_retry_policies(vec![Arc::new(ResponseErrorPolicy) as Arc<dyn Policy>]);
        let client = ClientBuilder::with_location(location, credentials)
            .client_options(options)
            .container_client(container.clone());
        Ok(AzureStore {
            container: client,
            container_name: container,
            endpoint,
            sas,
        })
    }

    /// Creates the container; succeeds if it already exists.
    pub async fn create_container(&self) -> StorageResult<()> {
        match self.container.create().await {
            Ok(_) => Ok(()),
            Err(e) if service_code(&e) == Some("ContainerAlreadyExists") => Ok(()),
            Err(e) => Err(self.map_error(&e, &self.container_name)),
        }
    }

    /// Deletes the container and everything in it.
    pub async fn delete_container(&self) -> StorageResult<()> {
        self.container
            .delete()
            .await
            .map(|_| ())
            .map_err(|e| self.map_error(&e, &self.container_name))
    }

    fn blob(&self, name: &str) -> BlobClient {
        self.container.blob_client(name)
    }

    /// Maps an SDK error about `name` (a blob, or the container).
    fn map_error(&self, error: &azure_core::Error, name: &str) -> StorageError {
        let Some(service) = error.downcast_ref::<ServiceError>() else {
            return match error.kind() {
                ErrorKind::Io => {
                    StorageError::Transient(format!("cannot reach {}: {}", self.endpoint, error_chain(error)))
                }
                ErrorKind::Credential => {
                    StorageError::Forbidden(format!("{}: {}", self.credential_kind(), error_chain(error)))
                }
                _ => StorageError::Other(format!(
                    "unexpected answer from {} about {name}: {}",
                    self.endpoint,
                    error_chain(error)
                )),
            };
        };
        let code = service.code.as_deref().unwrap_or_default();
        let detail = format!("{name}: {service}");
        match (service.status, code) {
            (404, "ContainerNotFound") => StorageError::Other(format!(
                "container {} does not exist at {} ({service})",
                self.container_name, self.endpoint
            )),
            (404, _) => StorageError::NotFound(name.to_owned()),
            (304 | 412, _) | (409, "BlobAlreadyExists") => StorageError::PreconditionFailed(detail),
            (409, _) => StorageError::Conflict(detail),
            (401, _) | (403, "AuthenticationFailed" | "InvalidAuthenticationInfo") => StorageError::Forbidden(format!(
                "authentication failed at {}: bad {} (wrong, or expired): {service}",
                self.endpoint,
                self.credential_kind()
            )),
            // Azure's answer to a request refused by network rules, and
            // Azurite's to any bad signature.
            (403, "AuthorizationFailure") => StorageError::Forbidden(format!(
                "access to container {} at {} refused: bad {}, or no access from here: {service}",
                self.container_name,
                self.endpoint,
                self.credential_kind()
            )),
            (403, _) => StorageError::Forbidden(format!(
                "no access: the {} does not allow this request on {name} in container {}: {service}",
                self.credential_kind(),
                self.container_name
            )),
            (429 | 503, _) => StorageError::Throttled {
                message: detail,
                retry_after: service.retry_after,
            },
            (500..=599, _) => StorageError::Transient(detail),
            (400 | 411 | 413 | 414 | 416, _) => StorageError::Invalid(detail),
            _ => StorageError::Other(detail),
        }
    }

    /// Azure answers a conditional read of a missing blob with 412; tell
    /// that apart, since only `NotFound` says the blob is gone.
    async fn read_error(&self, error: &azure_core::Error, name: &str) -> StorageError {
        let mapped = self.map_error(error, name);
        if !matches!(mapped, StorageError::PreconditionFailed(_)) {
            return mapped;
        }
        match self.blob(name).get_properties().await {
            Err(e) if service_status(&e) == Some(404) => self.map_error(&e, name),
            _ => mapped,
        }
    }

    fn credential_kind(&self) -> &'static str {
        if self.sas.is_some() {
            "SAS token"
        } else {
            "account key"
        }
    }

    async fn wait_for_copy(&self, to: &str) -> StorageResult<ETag> {
        let mut pause = Duration::from_millis(50);
        loop {
            let response = self
                .blob(to)
                .get_properties()
                .await
                .map_err(|e| self.map_error(&e, to))?;
            let properties = &response.blob.properties;
            match &properties.copy_status {
                None | Some(CopyStatus::Success) => return Ok(quoted(properties.etag.as_ref())),
                Some(CopyStatus::Pending) => {}
                Some(status) => {
                    return Err(StorageError::Other(format!(
                        "copy to {to} ended as {status:?}: {}",
                        properties.copy_status_description.as_deref().unwrap_or("")
                    )))
                }
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2).min(Duration::from_secs(2));
        }
    }
}

fn service_code(error: &azure_core::Error) -> Option<&str> {
    error.downcast_ref::<ServiceError>().and_then(|s| s.code.as_deref())
}

fn service_status(error: &azure_core::Error) -> Option<u16> {
    error.downcast_ref::<ServiceError>().map(|s| s.status)
}

#[async_trait]
impl BlobStore for AzureStore {
    fn describe(&self) -> String {
        format!("Azure container {} at {}", self.container_name, self.endpoint)
    }

    async fn get_properties(&self, name: &str) -> StorageResult<BlobProperties> {
        let response = self
            .blob(name)
            .get_properties()
            .await
            .map_err(|e| self.map_error(&e, name))?;
        Ok(properties_of(&response.blob))
    }

    async fn get_block_list(&self, name: &str) -> StorageResult<Vec<CommittedBlock>> {
        let response = self
            .blob(name)
            .get_block_list()
            .block_list_type(BlockListType::Committed)
            .await
            .map_err(|e| self.map_error(&e, name))?;
        Ok(response
            .block_with_size_list
            .blocks
            .into_iter()
            .filter_map(|block| match block.block_list_type {
                BlobBlockType::Committed(id) => Some(CommittedBlock {
                    id: BlockId(id.bytes().to_vec()),
                    size: block.size_in_bytes,
                }),
                _ => None,
            })
            .collect())
    }

    async fn read_range(&self, name: &str, offset: u64, buf: &mut [u8], condition: &Condition) -> StorageResult<usize> {
        if buf.is_empty() {
            let mut request = self.blob(name).get_properties();
            if let Some(condition) = if_match(condition) {
                request = request.if_match(condition);
            }
            if let Err(e) = request.await {
                return Err(self.read_error(&e, name).await);
            }
            return Ok(0);
        }
        let len = u64::try_from(buf.len()).map_err(|_| StorageError::Invalid("read buffer too large".into()))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| StorageError::Invalid(format!("read of {name} past 2^64")))?;
        // One request for the whole range: the chunk size is the range.
        let mut request = self.blob(name).get().range(Range::new(offset, end)).chunk_size(len);
        if let Some(condition) = if_match(condition) {
            request = request.if_match(condition);
        }
        let mut pages = request.into_stream();
        let response = match pages.next().await {
            None => return Ok(0),
            Some(Ok(response)) => response,
            // The range starts at or past the end of the blob.
            Some(Err(e)) if service_status(&e) == Some(416) => return Ok(0),
            Some(Err(e)) => return Err(self.read_error(&e, name).await),
        };
        if let Some(Range::Range(range)) = &response.content_range {
            if range.start != offset {
                return Err(StorageError::Other(format!(
                    "asked {name} for bytes from {offset}, got a range from {}",
                    range.start
                )));
            }
        }
        let mut body = response.data;
        let mut filled = 0usize;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.map_error(&e, name))?;
            let end = filled.saturating_add(chunk.len());
            let dest = buf
                .get_mut(filled..end)
                .ok_or_else(|| StorageError::Other(format!("{name} answered with more than the range asked")))?;
            dest.copy_from_slice(&chunk);
            filled = end;
        }
        Ok(filled)
    }

    async fn put_block(&self, name: &str, id: &BlockId, data: Bytes) -> StorageResult<()> {
        check_ids(name, std::slice::from_ref(id))?;
        self.blob(name)
            .put_block(Bytes::copy_from_slice(&id.0), data)
            .await
            .map(|_| ())
            .map_err(|e| self.map_error(&e, name))
    }

    async fn put_block_list(&self, name: &str, blocks: &[BlockId], condition: &Condition) -> StorageResult<ETag> {
        check_ids(name, blocks)?;
        let list = BlockList {
            blocks: blocks
                .iter()
                .map(|id| BlobBlockType::Latest(Bytes::copy_from_slice(&id.0).into()))
                .collect(),
        };
        let mut request = self.blob(name).put_block_list(list);
        if let Some(condition) = if_match(condition) {
            request = request.if_match(condition);
        }
        let response = request.await.map_err(|e| self.map_error(&e, name))?;
        Ok(quoted(&response.etag))
    }

    async fn put_blob(
        &self,
        name: &str,
        data: Bytes,
        is_dir_marker: bool,
        condition: &Condition,
    ) -> StorageResult<ETag> {
        if is_dir_marker && !data.is_empty() {
            return Err(StorageError::Invalid(format!("directory marker {name} must be empty")));
        }
        let mut request = self.blob(name).put_block_blob(data);
        if is_dir_marker {
            let mut metadata = Metadata::new();
            metadata.insert(DIR_MARKER_KEY, "true");
            request = request.metadata(metadata);
        }
        if let Some(condition) = if_match(condition) {
            request = request.if_match(condition);
        }
        let response = request.await.map_err(|e| self.map_error(&e, name))?;
        Ok(quoted(&response.etag))
    }

    async fn delete_blob(&self, name: &str) -> StorageResult<()> {
        self.blob(name)
            .delete()
            .delete_snapshots_method(DeleteSnapshotsMethod::Include)
            .await
            .map(|_| ())
            .map_err(|e| self.map_error(&e, name))
    }

    async fn list(&self, prefix: &str) -> StorageResult<Listing> {
        if !(prefix.is_empty() || prefix.ends_with('/')) {
            return Err(StorageError::Invalid(format!(
                "listing prefix {prefix:?} must be empty or end with /"
            )));
        }
        let mut request = self.container.list_blobs().delimiter("/").include_metadata(true);
        if !prefix.is_empty() {
            request = request.prefix(prefix.to_owned());
        }
        let mut pages = request.into_stream();
        let mut listing = Listing::default();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.map_error(&e, prefix))?;
            for item in page.blobs.items {
                match item {
                    BlobItem::Blob(blob) => {
                        if is_dir_marker(blob.metadata.as_ref()) {
                            listing.prefixes.push(format!("{}/", blob.name));
                        } else {
                            let properties = properties_of(&blob);
                            listing.blobs.push(ListedBlob {
                                name: blob.name,
                                properties,
                            });
                        }
                    }
                    BlobItem::BlobPrefix(sub) => listing.prefixes.push(sub.name),
                }
            }
        }
        listing.blobs.sort_by(|a, b| a.name.cmp(&b.name));
        listing.prefixes.sort();
        listing.prefixes.dedup();
        Ok(listing)
    }

    async fn copy_blob(&self, from: &str, to: &str) -> StorageResult<ETag> {
        let mut source = self
            .blob(from)
            .url()
            .map_err(|e| StorageError::Invalid(format!("blob name {from:?}: {e}")))?;
        if let Some(sas) = &self.sas {
            source.set_query(Some(sas));
        }
        let response = self.blob(to).copy(source).await.map_err(|e| {
            match service_code(&e) {
                // The copy's source is what is missing.
                Some("CannotVerifyCopySource" | "BlobNotFound") => StorageError::NotFound(from.to_owned()),
                _ => self.map_error(&e, to),
            }
        })?;
        match response.copy_status {
            CopyStatus::Success => Ok(quoted(&response.etag)),
            _ => self.wait_for_copy(to).await,
        }
    }

    async fn check_access(&self) -> StorageResult<()> {
        let probe = async {
            let mut pages = self
                .container
                .list_blobs()
                .max_results(MaxResults::new(std::num::NonZeroU32::MIN))
                .into_stream();
            match pages.next().await {
                Some(Err(e)) => Err(self.map_error(&e, &self.container_name)),
                _ => Ok(()),
            }
        };
        match tokio::time::timeout(CHECK_ACCESS_TIMEOUT, probe).await {
            Ok(result) => result,
            Err(_) => Err(StorageError::Transient(format!(
                "no answer from {} within {} s",
                self.endpoint,
                CHECK_ACCESS_TIMEOUT.as_secs()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: Option<&str>) -> AzureSettings {
        AzureSettings {
            account: "acct".into(),
            container: "data".into(),
            endpoint: endpoint.map(str::to_owned),
            credentials: AzureCredentials::AccountKey("a2V5".into()),
        }
    }

    #[test]
    fn endpoints() {
        let public = AzureStore::new(settings(None)).unwrap();
        assert_eq!(public.endpoint, "https://acct.blob.core.windows.net");
        assert_eq!(
            public.blob("a/b").url().unwrap().as_str(),
            "https://acct.blob.core.windows.net/data/a/b"
        );
        let azurite = AzureStore::new(settings(Some("http://127.0.0.1:10000/devstoreaccount1/"))).unwrap();
        assert_eq!(
            azurite.blob("x").url().unwrap().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/data/x"
        );
        assert!(matches!(
            AzureStore::new(settings(Some("ftp://host"))),
            Err(StorageError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_bad_settings() {
        let mut bad = settings(None);
        bad.container = "Bad_Name".into();
        assert!(matches!(AzureStore::new(bad), Err(StorageError::Invalid(_))));
        let mut bad = settings(None);
        bad.credentials = AzureCredentials::AccountKey("not base64!".into());
        assert!(matches!(AzureStore::new(bad), Err(StorageError::Invalid(_))));
    }

    #[test]
    fn etags_are_quoted_once() {
        assert_eq!(quoted("0x1"), ETag("\"0x1\"".into()));
        assert_eq!(quoted("\"0x1\""), ETag("\"0x1\"".into()));
    }

    #[test]
    fn retry_after_headers() {
        let mut headers = Headers::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "3");
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("x-ms-retry-after-ms", "250");
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
    }

    #[test]
    fn signatures_are_redacted() {
        assert_eq!(
            redact("url (http://h/c?sv=1&sig=abc%3D&sp=r) and sig=x"),
            "url (http://h/c?sv=1&sig=REDACTED&sp=r) and sig=REDACTED"
        );
    }

    #[test]
    fn credentials_are_not_printed() {
        let text = format!("{:?}", AzureCredentials::Sas("sig=secret".into()));
        assert!(!text.contains("secret"));
    }
}
