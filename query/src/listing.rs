//! The local file system as the catalog sees it: every listing leaves out the files a
//! compaction has merged into another file of the same instance (its inputs, between its
//! rename and its deletes, or after a crash there), by the rule of
//! `gaveurs_sinks::parquet::compact::superseded`. DataFusion lists a table's files through
//! the object store at planning and at scan time, so filtering here covers both, for every
//! dataset folder alike.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use gaveurs_sinks::parquet::compact::superseded;

/// Wraps the local file system; only listings differ.
#[derive(Debug)]
pub struct PublishedFiles {
    inner: Arc<dyn ObjectStore>,
}

impl PublishedFiles {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }
}

impl fmt::Display for PublishedFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublishedFiles({})", self.inner)
    }
}

/// `objects` without those superseded in their folder.
fn without_superseded(objects: Vec<ObjectMeta>) -> Vec<ObjectMeta> {
    let split = |o: &ObjectMeta| -> (String, String) {
        let location = o.location.as_ref();
        let (folder, name) = location.rsplit_once('/').unwrap_or(("", location));
        (folder.to_string(), name.to_string())
    };
    let mut by_folder: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for object in &objects {
        let (folder, name) = split(object);
        by_folder.entry(folder).or_default().push(name);
    }
    let mut hidden: HashSet<(String, String)> = HashSet::new();
    for (folder, names) in &by_folder {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for name in superseded(&names) {
            hidden.insert((folder.clone(), name.to_string()));
        }
    }
    if hidden.is_empty() {
        return objects;
    }
    objects
        .into_iter()
        .filter(|o| !hidden.contains(&split(o)))
        .collect()
}

#[async_trait::async_trait]
impl ObjectStore for PublishedFiles {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    /// The whole listing is read first: whether a file is superseded depends on the other
    /// files of its folder.
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let listing = self.inner.list(prefix);
        futures::stream::once(async move {
            let objects: Vec<ObjectMeta> = listing.try_collect().await?;
            Ok::<_, datafusion::object_store::Error>(futures::stream::iter(
                without_superseded(objects).into_iter().map(Ok),
            ))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result.objects = without_superseded(result.objects);
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
