//! What the Azure backend reports when the settings are wrong, so that a
//! mount fails early with a message that says what to fix. The cases that
//! need a service run against Azurite when `BLOBCACHE_AZURITE_ENDPOINT` is set.
#![cfg(feature = "azure")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use blobcache::storage::azure::{AzureCredentials, AzureSettings, AzureStore};
use blobcache::storage::{BlobStore, StorageError};

const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn azurite_endpoint() -> Option<String> {
    let endpoint = std::env::var("BLOBCACHE_AZURITE_ENDPOINT").ok();
    if endpoint.is_none() {
        use std::io::Write;
        // Written past the test harness's capture so that it shows.
        let _ = writeln!(
            std::io::stderr(),
            "Azure error test skipped: BLOBCACHE_AZURITE_ENDPOINT is not set"
        );
    }
    endpoint
}

fn store(endpoint: &str, container: &str, credentials: AzureCredentials) -> AzureStore {
    AzureStore::new(AzureSettings {
        account: "devstoreaccount1".to_owned(),
        container: container.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        credentials,
    })
    .unwrap()
}

fn unique_container(tag: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("errors-{tag}-{stamp}")
}

#[tokio::test]
async fn unreachable_endpoint_is_transient_and_named() {
    let endpoint = "http://127.0.0.1:9/devstoreaccount1";
    let store = store(endpoint, "data", AzureCredentials::AccountKey(AZURITE_KEY.to_owned()));
    match store.check_access().await {
        Err(StorageError::Transient(message)) => {
            assert!(message.contains("127.0.0.1:9"), "{message}");
        }
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_key_is_forbidden() {
    let Some(endpoint) = azurite_endpoint() else {
        return;
    };
    let good = store(
        &endpoint,
        &unique_container("key"),
        AzureCredentials::AccountKey(AZURITE_KEY.to_owned()),
    );
    good.create_container().await.unwrap();
    let wrong_key = AzureCredentials::AccountKey("d3Jvbmcga2V5".to_owned());
    let bad = store(&endpoint, &unique_container("key"), wrong_key);
    match bad.check_access().await {
        Err(StorageError::Forbidden(message)) => {
            assert!(message.contains("account key"), "{message}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    good.delete_container().await.unwrap();
}

#[tokio::test]
async fn bad_sas_is_forbidden() {
    let Some(endpoint) = azurite_endpoint() else {
        return;
    };
    let sas = "?sv=2021-08-06&ss=b&srt=sco&sp=rl&se=2099-01-01T00:00:00Z&st=2020-01-01T00:00:00Z&spr=https,http&sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D";
    let bad = store(&endpoint, "anything", AzureCredentials::Sas(sas.to_owned()));
    match bad.check_access().await {
        Err(StorageError::Forbidden(message)) => {
            assert!(message.contains("SAS"), "{message}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_container_is_reported() {
    let Some(endpoint) = azurite_endpoint() else {
        return;
    };
    let name = unique_container("missing");
    let store = store(&endpoint, &name, AzureCredentials::AccountKey(AZURITE_KEY.to_owned()));
    match store.check_access().await {
        Err(StorageError::Other(message)) => {
            assert!(
                message.contains(&name) && message.contains("does not exist"),
                "{message}"
            );
        }
        other => panic!("expected an error naming the container, got {other:?}"),
    }
    // A blob request in a missing container is no NotFound for the blob.
    let blob = store.get_properties("x").await;
    assert!(!matches!(blob, Err(StorageError::NotFound(_))), "{blob:?}");
    store.create_container().await.unwrap();
    store.check_access().await.unwrap();
    store.create_container().await.unwrap();
    store.delete_container().await.unwrap();
}
