//! SQL over the published Parquet datasets, for analysts: `gaveurs query` and
//! `POST /api/v1/query`.
//!
//! A [`Catalog`] is opened per query from the Parquet root (`<data_dir>/parquet`): one
//! DataFusion table per dataset folder, listing only published files (`*.parquet` whose name
//! does not start with `.`; in-progress files are `.name.parquet.tmp`) with the Hive partition
//! columns `date` and `site` taken from `date=…/site=…/`. A table's columns are its known
//! schema merged with the schemas of its files, every column nullable, so a file written by an
//! older version (without a newer column) reads that column as null. Every known dataset is a
//! table even before its first file exists: an empty one, with its known columns.
//!
//! A folder may also hold, for a moment or after a crash, the small files a compaction has
//! merged (`gaveurs_sinks::parquet::compact`): every listing leaves out a file whose range
//! another file of the same instance and writer strictly contains, so their rows are read
//! once, from the merged file.
//!
//! `lot_kpis` is a view: the latest row (greatest `_computed_at`) of each lot in
//! `lot_kpis_history`, the append-only listing of every row ever written.
//!
//! Queries are read-only: DDL, DML (`INSERT`, `COPY`) and other statements (`SET`) are refused.
//!
//! They run inside the pipeline's process, so each is bounded by [`QueryLimits`] (`[query]`):
//! a memory pool of its own, which it may not exceed (it never spills to disk: the disk is the
//! durable log's), and a run time, after which it is dropped, which cancels its work.

mod format;
mod listing;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use gaveurs_schemas::datasets::Dataset;

pub use datafusion::arrow;
pub use format::{BatchWriter, Format, sql_type};

/// Hive partition columns, in folder order: `date=YYYY-MM-DD/site=XX/`.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "site"];

/// Every row of `lot_kpis` ever written; `lot_kpis` is the latest row per lot.
pub const LOT_KPIS_HISTORY: &str = "lot_kpis_history";
const LOT_KPIS: &str = "lot_kpis";

/// Published files: not hidden, `.parquet`. Matched against the file name only (the
/// `key=value` folders above it are partitions).
const PUBLISHED_FILES: &str = "[!.]*.parquet";

/// Schemas of the datasets whose writers do not live in `gaveurs_schemas::datasets`: the
/// columns a query sees when no file exists yet. Files may have more columns (they are added
/// to the table), and a column listed here that a file lacks reads as null.
pub fn fallback_schemas() -> Vec<(&'static str, Schema)> {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut late = Dataset::GavageMeals.schema().fields().to_vec();
    late.push(Arc::new(Field::new("_lateness_s", DataType::Float64, true)));
    vec![
        (
            LOT_KPIS,
            Schema::new(vec![
                Field::new("code_lot", DataType::Utf8, false),
                Field::new("gaveur_id", DataType::Int64, false),
                Field::new("site", DataType::Utf8, false),
                Field::new("itm", DataType::Float64, true),
                Field::new("_computed_at", utc(), false),
            ]),
        ),
        ("late", Schema::new(late)),
        (
            gaveurs_schemas::datasets::alerts::NAME,
            gaveurs_schemas::datasets::alerts::schema().as_ref().clone(),
        ),
        (
            gaveurs_schemas::datasets::anomalies::NAME,
            gaveurs_schemas::datasets::anomalies::schema()
                .as_ref()
                .clone(),
        ),
        (
            gaveurs_schemas::datasets::ledger::NAME,
            gaveurs_schemas::datasets::ledger::schema().as_ref().clone(),
        ),
    ]
}

/// The datasets that are tables even before their first file: (folder name, known schema).
pub fn known_datasets() -> Vec<(&'static str, SchemaRef)> {
    Dataset::ALL
        .iter()
        .map(|d| (d.name(), d.schema()))
        .chain(
            fallback_schemas()
                .into_iter()
                .map(|(name, schema)| (name, Arc::new(schema))),
        )
        .collect()
}

/// The columns a table has when its folder holds no file yet: the known schema, every column
/// nullable, plus the partition columns it does not already have.
pub fn known_tables() -> Vec<(String, SchemaRef)> {
    let mut tables = Vec::new();
    for (name, schema) in known_datasets() {
        let columns = with_partition_columns(&nullable(&schema));
        if name == LOT_KPIS {
            tables.push((LOT_KPIS.to_string(), columns.clone()));
            tables.push((LOT_KPIS_HISTORY.to_string(), columns));
        } else {
            tables.push((name.to_string(), columns));
        }
    }
    tables
}

/// `gaveurs query --help`: the tables and their columns, from the same schemas the catalog
/// registers.
pub fn help_text() -> String {
    let mut text = String::from(
        "Tables (one per dataset under <data_dir>/parquet/; a dataset without files yet is an \
         empty table). `date` and `site` are the partition folders (strings), unless the files \
         have a column of that name. lot_kpis holds the latest row of each lot (greatest \
         _computed_at); lot_kpis_history every row ever written. Any other folder under \
         parquet/ is a table too, with the columns of its files. Files written by older \
         versions read a column they lack as null.\n",
    );
    for (name, schema) in known_tables() {
        text.push_str(&format!("\n  {name}\n"));
        let mut line = String::from("   ");
        for (n, field) in schema.fields().iter().enumerate() {
            let column = format!(
                " {} {}{}",
                field.name(),
                sql_type(field.data_type()),
                if n + 1 < schema.fields().len() {
                    ","
                } else {
                    ""
                }
            );
            if line.len() + column.len() > 92 {
                text.push_str(&line);
                text.push('\n');
                line = String::from("   ");
            }
            line.push_str(&column);
        }
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(
        "\nExamples:\n  gaveurs query \"SELECT code_lot, jour, moment, dose_reelle FROM gavage_meals \
         ORDER BY jour\"\n  gaveurs query --format csv \"SELECT site, count(*) AS n FROM \
         sqal_samples GROUP BY site\"\n  gaveurs query \"SHOW COLUMNS FROM lot_kpis\"\n",
    );
    text
}

/// What one analyst query may use: `[query]` of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Memory for the query's hash tables, sorts and joins, MiB.
    pub memory_limit_mb: u64,
    /// Seconds from the start of the query to its last row.
    pub timeout_s: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_limit_mb: 256,
            timeout_s: 30,
        }
    }
}

impl QueryLimits {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024)
    }
}

/// Why a query gave no result.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query is wrong or not allowed (unknown table or column, syntax, a write): the
    /// caller's to fix.
    #[error("{0}")]
    Invalid(String),
    /// More rows than a caller may receive at once.
    #[error("the result has more than {0} rows; add a LIMIT or aggregate")]
    TooLarge(usize),
    /// Reading the data failed (I/O, a corrupt file).
    #[error("{0}")]
    Failed(String),
    /// Writing the result failed (e.g. a closed pipe).
    #[error("writing the result: {0}")]
    Output(#[source] std::io::Error),
    /// The query needed more memory than one query may hold; it was cancelled.
    #[error(
        "the query needs more than the {limit_mb} MiB of memory one query may use \
         ([query] memory_limit_mb) and was cancelled; filter or aggregate earlier, add a LIMIT, \
         or raise the limit ({detail})"
    )]
    MemoryExceeded { limit_mb: u64, detail: String },
    /// The query ran longer than one query may; it was cancelled.
    #[error(
        "the query ran longer than {limit_s} s ([query] timeout_s) and was cancelled; filter or \
         aggregate earlier, add a LIMIT, or raise the limit"
    )]
    TimedOut { limit_s: u64 },
}

impl gaveurs_schemas::error::Classified for QueryError {
    fn domain(&self) -> gaveurs_schemas::ErrorDomain {
        use gaveurs_schemas::ErrorDomain;
        match self {
            // The query is the caller's: a smaller or narrower one will do.
            QueryError::Invalid(_)
            | QueryError::TooLarge(_)
            | QueryError::MemoryExceeded { .. }
            | QueryError::TimedOut { .. } => ErrorDomain::User,
            QueryError::Failed(_) => ErrorDomain::Internal,
            // The reader of the result went away.
            QueryError::Output(_) => ErrorDomain::External,
        }
    }
}

impl QueryError {
    /// A failure while the query runs, which may be its memory pool saying no.
    fn running(error: DataFusionError, limits: Option<QueryLimits>) -> QueryError {
        match (error.find_root(), limits) {
            (DataFusionError::ResourcesExhausted(detail), Some(limits)) => {
                QueryError::MemoryExceeded {
                    limit_mb: limits.memory_limit_mb,
                    detail: detail.clone(),
                }
            }
            _ => QueryError::from(error),
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        match error.find_root() {
            DataFusionError::IoError(_)
            | DataFusionError::ObjectStore(_)
            | DataFusionError::ParquetError(_)
            | DataFusionError::Internal(_)
            | DataFusionError::ResourcesExhausted(_)
            | DataFusionError::ExecutionJoin(_) => QueryError::Failed(error.to_string()),
            DataFusionError::ArrowError(e, _)
                if matches!(**e, arrow::error::ArrowError::IoError(..)) =>
            {
                QueryError::Failed(error.to_string())
            }
            _ => QueryError::Invalid(error.to_string()),
        }
    }
}

impl From<arrow::error::ArrowError> for QueryError {
    fn from(error: arrow::error::ArrowError) -> Self {
        match error {
            arrow::error::ArrowError::IoError(_, e) => QueryError::Output(e),
            other => QueryError::Failed(other.to_string()),
        }
    }
}

/// The datasets of one Parquet root as SQL tables.
pub struct Catalog {
    ctx: SessionContext,
    limits: Option<QueryLimits>,
}

impl Catalog {
    /// Registers every dataset under `parquet_root` (which need not exist). Reads the footers
    /// of the published files, to merge their schemas. Its queries may use any amount of
    /// memory: this is for the pipeline's own reads.
    pub async fn open(parquet_root: &Path) -> Result<Catalog, QueryError> {
        Self::open_with(parquet_root, None).await
    }

    /// [`Catalog::open`] for an analyst: each query may hold at most
    /// `limits.memory_limit_mb` (the catalog serves one query; time is bounded by the caller,
    /// see [`within_time`]).
    pub async fn open_limited(
        parquet_root: &Path,
        limits: QueryLimits,
    ) -> Result<Catalog, QueryError> {
        Self::open_with(parquet_root, Some(limits)).await
    }

    async fn open_with(
        parquet_root: &Path,
        limits: Option<QueryLimits>,
    ) -> Result<Catalog, QueryError> {
        let root = std::path::absolute(parquet_root).map_err(|e| {
            QueryError::Failed(format!("cannot resolve {}: {e}", parquet_root.display()))
        })?;
        if root.to_string_lossy().contains(['*', '?', '[']) {
            return Err(QueryError::Failed(format!(
                "the data dir {} contains a glob character (* ? [), which DataFusion cannot list",
                root.display()
            )));
        }
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("gaveurs", "public");
        // Strings read as Utf8, as the known schemas and every writer declare them.
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let ctx = match limits {
            None => SessionContext::new_with_config(config),
            Some(limits) => {
                // Spilling would let a query fill the disk the durable log needs; over its
                // pool, a query fails instead.
                let runtime = RuntimeEnvBuilder::new()
                    .with_memory_pool(Arc::new(GreedyMemoryPool::new(limits.memory_bytes())))
                    .with_disk_manager_builder(
                        DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
                    )
                    .build_arc()?;
                SessionContext::new_with_config_rt(config, runtime)
            }
        };
        // Listings leave out the inputs of a compaction once its file is published, so a
        // query never counts their rows twice (`listing.rs`).
        ctx.register_object_store(
            ObjectStoreUrl::local_filesystem().as_ref(),
            Arc::new(listing::PublishedFiles::new(Arc::new(
                datafusion::object_store::local::LocalFileSystem::new(),
            ))),
        );

        let mut datasets: Vec<(String, Option<SchemaRef>)> = known_datasets()
            .into_iter()
            .map(|(name, schema)| (name.to_string(), Some(schema)))
            .collect();
        let known: BTreeSet<String> = datasets.iter().map(|(n, _)| n.clone()).collect();
        for name in other_folders(&root) {
            if !known.contains(&name) && name != LOT_KPIS_HISTORY {
                datasets.push((name, None));
            }
        }
        for (name, schema) in datasets {
            let table_name = if name == LOT_KPIS {
                LOT_KPIS_HISTORY
            } else {
                &name
            };
            let dir = root.join(&name);
            if let Some(table) = dataset_table(&ctx, &dir, schema)
                .await
                .map_err(|e| QueryError::Failed(format!("cannot read the dataset {name}: {e}")))?
            {
                ctx.register_table(table_name, table)?;
            }
        }
        let latest = ctx.sql(&latest_row_per_lot(&ctx).await?).await?;
        ctx.register_table(LOT_KPIS, latest.into_view())?;
        Ok(Catalog { ctx, limits })
    }

    /// Plans a read-only query: DDL, DML and statements are refused.
    pub async fn sql(&self, sql: &str) -> Result<DataFrame, QueryError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        self.ctx
            .sql_with_options(sql, options)
            .await
            .map_err(|e| match QueryError::from(e) {
                // What `SQLOptions` refuses, said in the caller's terms.
                QueryError::Invalid(message)
                    if ["DDL", "DML", "Statement"]
                        .iter()
                        .any(|kind| message.contains(&format!("{kind} not supported: "))) =>
                {
                    QueryError::Invalid(format!(
                        "only read-only queries (SELECT, WITH, EXPLAIN, SHOW) are allowed: {message}"
                    ))
                }
                other => other,
            })
    }

    /// Runs a read-only query and streams its result.
    pub async fn stream(&self, sql: &str) -> Result<SendableRecordBatchStream, QueryError> {
        self.execute(self.sql(sql).await?).await
    }

    async fn execute(&self, frame: DataFrame) -> Result<SendableRecordBatchStream, QueryError> {
        frame.execute_stream().await.map_err(|e| self.running(e))
    }

    fn running(&self, error: DataFusionError) -> QueryError {
        QueryError::running(error, self.limits)
    }
}

/// Awaits `query`, or drops it (which cancels its work) once it has run longer than
/// `limits.timeout_s`.
pub async fn within_time<T>(
    limits: QueryLimits,
    query: impl Future<Output = Result<T, QueryError>>,
) -> Result<T, QueryError> {
    tokio::time::timeout(limits.timeout(), query)
        .await
        .unwrap_or(Err(QueryError::TimedOut {
            limit_s: limits.timeout_s,
        }))
}

/// Runs `sql` over `parquet_root` within `limits` and writes the result to `out` in
/// `format`; returns the number of rows. Batches are written as they come (but `table` needs
/// them all first), so a query cancelled midway may have written some.
pub async fn run<W: std::io::Write>(
    parquet_root: &Path,
    sql: &str,
    format: Format,
    out: W,
    limits: QueryLimits,
) -> Result<usize, QueryError> {
    within_time(limits, async {
        // Until the first batch nothing is written, so a file a compaction deleted meanwhile
        // can be answered by listing again (its rows are in the compacted file now).
        let (catalog, mut stream, first) = match start(parquet_root, sql, limits).await {
            Err(e) if vanished(&e) => start(parquet_root, sql, limits).await?,
            started => started?,
        };
        let mut writer = BatchWriter::new(format, stream.schema(), out)?;
        let mut rows = 0;
        if let Some(batch) = first {
            rows += batch.num_rows();
            writer.write(&batch)?;
        }
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| catalog.running(e))?;
            rows += batch.num_rows();
            writer.write(&batch)?;
        }
        writer.finish()?;
        Ok(rows)
    })
    .await
}

/// Opens a catalog within `limits`, plans `sql` and reads the first batch.
async fn start(
    parquet_root: &Path,
    sql: &str,
    limits: QueryLimits,
) -> Result<
    (
        Catalog,
        SendableRecordBatchStream,
        Option<arrow::array::RecordBatch>,
    ),
    QueryError,
> {
    let catalog = Catalog::open_limited(parquet_root, limits).await?;
    let mut stream = catalog.stream(sql).await?;
    let first = stream
        .next()
        .await
        .transpose()
        .map_err(|e| catalog.running(e))?;
    Ok((catalog, stream, first))
}

/// A file listed for this query was gone when it was read: a compaction finished between
/// the listing and the read (its inputs are deleted once the merged file is published).
/// DataFusion reports it as the object store's "not found" or the OS's ENOENT, as text.
fn vanished(error: &QueryError) -> bool {
    matches!(error, QueryError::Failed(message)
        if message.contains("not found") || message.contains("No such file or directory"))
}

/// Runs `sql` within the memory of `limits` and collects its result, refusing more than
/// `max_rows` rows. Its time is the caller's to bound (with [`within_time`]), e.g. around the
/// task it runs in.
pub async fn collect_capped(
    parquet_root: &Path,
    sql: &str,
    max_rows: usize,
    limits: QueryLimits,
) -> Result<(SchemaRef, Vec<arrow::array::RecordBatch>), QueryError> {
    match collect_capped_once(parquet_root, sql, max_rows, limits).await {
        // Nothing was returned yet: list again (see `vanished`).
        Err(e) if vanished(&e) => collect_capped_once(parquet_root, sql, max_rows, limits).await,
        result => result,
    }
}

async fn collect_capped_once(
    parquet_root: &Path,
    sql: &str,
    max_rows: usize,
    limits: QueryLimits,
) -> Result<(SchemaRef, Vec<arrow::array::RecordBatch>), QueryError> {
    let catalog = Catalog::open_limited(parquet_root, limits).await?;
    let frame = catalog.sql(sql).await?;
    let stream = catalog.execute(frame.limit(0, Some(max_rows + 1))?).await?;
    let schema = stream.schema();
    let batches: Vec<_> = stream.try_collect().await.map_err(|e| catalog.running(e))?;
    if batches.iter().map(|b| b.num_rows()).sum::<usize>() > max_rows {
        return Err(QueryError::TooLarge(max_rows));
    }
    Ok((schema, batches))
}

/// Queries from the HTTP server run here, on their own threads, so a heavy query cannot
/// delay the tasks that acknowledge records.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(
                std::thread::available_parallelism()
                    .map(|n| n.get().div_ceil(2))
                    .unwrap_or(1),
            )
            .thread_name("gaveurs-query")
            .enable_all()
            .build()
            .expect("query runtime")
    })
}

/// Folders under the root that may be datasets (not `_rolls`, not hidden).
fn other_folders(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with(['.', '_']))
        .collect();
    names.sort();
    names
}

fn listing_options() -> ListingOptions {
    ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet")
}

/// One dataset folder as a table, or `None` for an unknown folder without files.
async fn dataset_table(
    ctx: &SessionContext,
    dir: &Path,
    known: Option<SchemaRef>,
) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
    let (url, files) = if dir.is_dir() {
        let url =
            ListingTableUrl::parse(format!("{}/", dir.display()))?.with_glob(PUBLISHED_FILES)?;
        let state = ctx.state();
        let store = state.runtime_env().object_store(&url)?;
        let files: Vec<_> = url
            .list_all_files(&state, store.as_ref(), ".parquet")
            .await?
            .try_filter(|meta| futures::future::ready(meta.size > 0))
            .try_collect()
            .await?;
        (Some(url), files)
    } else {
        (None, Vec::new())
    };
    let (Some(url), false) = (url, files.is_empty()) else {
        return Ok(known.map(|schema| {
            Arc::new(EmptyTable::new(with_partition_columns(&nullable(&schema))))
                as Arc<dyn TableProvider>
        }));
    };
    let state = ctx.state();
    let store = state.runtime_env().object_store(&url)?;
    let options = listing_options();
    let inferred = match options.format.infer_schema(&state, &store, &files).await {
        Ok(schema) => schema,
        // Files that disagree on a column's type, or one whose footer cannot be read: the
        // other tables stay queryable. The first type seen wins (files in path order), and a
        // file that cannot be read or cast fails only the queries that scan it.
        Err(e) => {
            tracing::warn!(dataset = %dir.display(), "merging the files' schemas: {e}");
            let mut files = files;
            files.sort_by(|a, b| a.location.cmp(&b.location));
            let mut merged = Schema::empty();
            for file in &files {
                match options
                    .format
                    .infer_schema(&state, &store, std::slice::from_ref(file))
                    .await
                {
                    Ok(schema) => merged = merge(Some(&merged), &schema),
                    Err(e) => tracing::warn!(file = %file.location, "unreadable footer: {e}"),
                }
            }
            Arc::new(merged)
        }
    };
    let file_schema = Arc::new(merge(known.as_deref(), &inferred));
    let partitions = partition_columns(&file_schema)
        .into_iter()
        .map(|name| (name.to_string(), DataType::Utf8))
        .collect();
    let config = ListingTableConfig::new(url)
        .with_listing_options(options.with_table_partition_cols(partitions))
        .with_schema(file_schema);
    Ok(Some(Arc::new(ListingTable::try_new(config)?)))
}

/// The known columns first (in their order, with their types), then the columns only files
/// have; every column nullable.
fn merge(known: Option<&Schema>, files: &Schema) -> Schema {
    let mut fields: Vec<Field> = known
        .map(|k| k.fields().iter().map(|f| f.as_ref().clone()).collect())
        .unwrap_or_default();
    for field in files.fields() {
        if !fields.iter().any(|f| f.name() == field.name()) {
            fields.push(field.as_ref().clone());
        }
    }
    Schema::new(
        fields
            .into_iter()
            .map(|f| f.with_nullable(true))
            .collect::<Vec<_>>(),
    )
}

fn nullable(schema: &Schema) -> Schema {
    merge(Some(schema), &Schema::empty())
}

/// The partition folders a table exposes as columns: `date` and `site`, unless the files
/// already have a column of that name (the file's value wins). The folders are nested, so
/// once one is shadowed the ones below it are not exposed either.
fn partition_columns(file_schema: &Schema) -> Vec<&'static str> {
    PARTITION_COLUMNS
        .into_iter()
        .take_while(|name| file_schema.field_with_name(name).is_err())
        .collect()
}

fn with_partition_columns(file_schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for name in partition_columns(file_schema) {
        fields.push(Field::new(name, DataType::Utf8, false));
    }
    Arc::new(Schema::new(fields))
}

/// `lot_kpis`: for each `code_lot`, the row of `lot_kpis_history` with the greatest
/// `_computed_at`; ties are broken by every other comparable column, so the answer never
/// depends on file order.
async fn latest_row_per_lot(ctx: &SessionContext) -> Result<String, QueryError> {
    let history = ctx.table_provider(LOT_KPIS_HISTORY).await?.schema();
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let columns: Vec<String> = history.fields().iter().map(|f| quote(f.name())).collect();
    let tie_breakers: Vec<String> = history
        .fields()
        .iter()
        .filter(|f| !["code_lot", "_computed_at"].contains(&f.name().as_str()))
        .filter(|f| !f.data_type().is_nested())
        .map(|f| format!("{} ASC NULLS LAST", quote(f.name())))
        .collect();
    let mut order = vec!["\"_computed_at\" DESC NULLS LAST".to_string()];
    order.extend(tie_breakers);
    Ok(format!(
        "SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY \"code_lot\" ORDER BY {order}) \
         AS __latest FROM {LOT_KPIS_HISTORY}) WHERE __latest = 1",
        columns = columns.join(", "),
        order = order.join(", "),
    ))
}

#[cfg(test)]
mod tests;
