//! Where backups' RDB files are kept: a directory under `data_dir` (the default), or an
//! S3-compatible bucket (`backups.s3`). Both through `object_store`, so the service does not
//! know which: objects are written whole or not at all (a local write goes to a staging file
//! renamed at the end; an S3 write is a multipart upload completed at the end), so a reader
//! never sees half an object.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use secrecy::ExposeSecret as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::BackupSettings;

/// S3's smallest part is 5 MiB; 8 MiB parts keep an upload's memory at a few parts.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight during one upload.
const PARTS_IN_FLIGHT: usize = 2;

/// Backup storage.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// `local` or `s3`, for logs and metrics.
    pub kind: &'static str,
}

/// A storage failure, described for logs and operators (never holding credentials:
/// `object_store`'s errors name the operation and the path).
pub type StorageResult<T> = Result<T, String>;

impl Storage {
    /// `data_dir/backups` (created 0700), or the configured bucket.
    pub fn open(settings: &BackupSettings, data_dir: &Path) -> anyhow::Result<Storage> {
        if let Some(s3) = &settings.s3 {
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_access_key_id(&s3.access_key_id)
                .with_secret_access_key(s3.secret_access_key.expose_secret());
            if let Some(endpoint) = &s3.endpoint {
                // Self-hosted S3 (MinIO, Ceph, moto) is addressed by path, and often over
                // plain HTTP on a private network.
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            let store = builder.build().map_err(|e| anyhow::anyhow!("backups.s3: {e}"))?;
            return Ok(Storage { store: Arc::new(store), kind: "s3" });
        }
        let dir = data_dir.join("backups").join("objects");
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| anyhow::anyhow!("backup storage {}: {e}", dir.display()))?;
        Ok(Storage { store: Arc::new(store), kind: "local" })
    }

    /// Uploads `file` as `key`, whole or not at all; answers its size.
    pub async fn put_file(&self, key: &str, file: &Path) -> StorageResult<u64> {
        let mut reader =
            tokio::fs::File::open(file).await.map_err(|e| format!("reading the backup file: {e}"))?;
        let upload = self
            .store
            .put_multipart(&ObjectPath::from(key))
            .await
            .map_err(|e| format!("storing {key}: {e}"))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(format!("reading the backup file: {e}"));
                }
            };
            size += n as u64;
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(format!("storing {key}: {e}"));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| format!("storing {key}: {e}"))?;
        Ok(size)
    }

    /// Downloads `key` into `file` (created 0600).
    pub async fn fetch_to(&self, key: &str, file: &Path) -> StorageResult<()> {
        let mut stream = self.stream(key).await?.1;
        let mut out = private_file(file).await.map_err(|e| format!("writing {}: {e}", file.display()))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("reading {key}: {e}"))?;
            out.write_all(&chunk).await.map_err(|e| format!("writing {}: {e}", file.display()))?;
        }
        out.flush().await.map_err(|e| format!("writing {}: {e}", file.display()))
    }

    /// The object's size and its bytes, as they come.
    pub async fn stream(
        &self,
        key: &str,
    ) -> StorageResult<(u64, BoxStream<'static, object_store::Result<Bytes>>)> {
        let got = self.store.get(&ObjectPath::from(key)).await.map_err(|e| format!("reading {key}: {e}"))?;
        Ok((got.meta.size, got.into_stream()))
    }

    /// Deletes `key`; one that is gone already is not an error.
    pub async fn delete(&self, key: &str) -> StorageResult<()> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(format!("deleting {key}: {e}")),
        }
    }

    /// Every object's key and when it was last written (for the sweep of orphans).
    pub async fn keys(&self) -> StorageResult<Vec<(String, time::OffsetDateTime)>> {
        let mut listing = self.store.list(None);
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| format!("listing backups: {e}"))?;
            let modified = time::OffsetDateTime::from_unix_timestamp(meta.last_modified.timestamp())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            keys.push((meta.location.to_string(), modified));
        }
        Ok(keys)
    }
}

/// A new file only our user may read: it holds a tenant's data.
pub async fn private_file(path: &Path) -> std::io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).await
}
