use super::*;
use gaveurs_schemas::error::Classified;

#[test]
fn partition_columns_are_shadowed_by_file_columns() {
    let meals = Dataset::GavageMeals.schema();
    assert_eq!(partition_columns(&meals), vec!["date"]);
    let samples = Dataset::SqalSamples.schema();
    assert_eq!(partition_columns(&samples), vec!["date", "site"]);
    let dated = Schema::new(vec![Field::new("date", DataType::Utf8, true)]);
    assert!(partition_columns(&dated).is_empty());
}

#[test]
fn merged_schema_keeps_known_columns_first_and_makes_all_nullable() {
    let known = Schema::new(vec![
        Field::new("a", DataType::Utf8, false),
        Field::new("b", DataType::Int64, false),
    ]);
    let files = Schema::new(vec![
        Field::new("c", DataType::Float64, false),
        Field::new("a", DataType::Utf8, false),
    ]);
    let merged = merge(Some(&known), &files);
    let names: Vec<_> = merged.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(merged.fields().iter().all(|f| f.is_nullable()));
}

#[test]
fn help_lists_every_column_of_every_known_table() {
    let help = help_text();
    for (table, schema) in known_tables() {
        let section = help
            .split(&format!("\n  {table}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("{table} missing from the help"));
        let section = section.split("\n\n").next().unwrap();
        for field in schema.fields() {
            assert!(
                section.contains(&format!(
                    " {} {}",
                    field.name(),
                    sql_type(field.data_type())
                )),
                "{table}.{} missing from the help",
                field.name()
            );
        }
    }
    for table in [
        "gavage_meals",
        "sqal_samples",
        "lot_outcomes",
        "dlq",
        "lot_kpis",
    ] {
        assert!(help.contains(&format!("\n  {table}\n")), "{table}");
    }
    for table in ["lot_kpis_history", "late", "alerts", "anomalies"] {
        assert!(help.contains(&format!("\n  {table}\n")), "{table}");
    }
}

#[tokio::test]
async fn every_known_table_exists_before_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("parquet")).await.unwrap();
    for (table, schema) in known_tables() {
        let frame = catalog
            .sql(&format!("SELECT * FROM {table}"))
            .await
            .unwrap();
        let got: Vec<_> = frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let expected: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(got, expected, "{table}");
        assert_eq!(frame.count().await.unwrap(), 0, "{table}");
    }
}

#[tokio::test]
async fn writes_and_definitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path()).await.unwrap();
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO alerts (alert_id) VALUES ('x')",
        "DROP TABLE alerts",
        "COPY (SELECT 1) TO '/tmp/gaveurs-query-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        match catalog.sql(sql).await {
            Err(QueryError::Invalid(message)) => {
                assert!(message.contains("read-only"), "{sql}: {message}")
            }
            Err(other) => panic!("{sql}: {other:?}"),
            Ok(_) => panic!("{sql} was accepted"),
        }
    }
    assert!(catalog.sql("EXPLAIN SELECT * FROM alerts").await.is_ok());
    assert!(catalog.sql("SHOW TABLES").await.is_ok());
}

fn write_parquet(path: &Path, batch: &arrow::array::RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

async fn count(catalog: &Catalog, sql: &str) -> Result<usize, QueryError> {
    let batches = catalog.sql(sql).await?.collect().await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test]
async fn a_broken_dataset_fails_only_the_queries_that_read_it() {
    use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let meal = RecordBatch::try_from_iter(vec![(
        "code_lot",
        Arc::new(StringArray::from(vec!["LL1"])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    write_parquet(
        &root.join("gavage_meals/date=2026-01-10/site=LL/a.parquet"),
        &meal,
    );
    // Two versions that disagree on a column's type.
    let entry_int = RecordBatch::try_from_iter(vec![(
        "entry",
        Arc::new(Int64Array::from(vec![1])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    let entry_float = RecordBatch::try_from_iter(vec![(
        "entry",
        Arc::new(Float64Array::from(vec![2.0])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    write_parquet(
        &root.join("ledger/date=2026-01-10/site=LL/a.parquet"),
        &entry_int,
    );
    write_parquet(
        &root.join("ledger/date=2026-01-11/site=LL/b.parquet"),
        &entry_float,
    );
    // A file that is not Parquet at all.
    let broken = root.join("anomalies/date=2026-01-10/site=LL/x.parquet");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, b"not parquet").unwrap();

    let catalog = Catalog::open(root).await.unwrap();
    assert_eq!(
        count(&catalog, "SELECT * FROM gavage_meals").await.unwrap(),
        1
    );
    assert_eq!(
        count(&catalog, "SELECT entry FROM ledger WHERE entry IN (1, 2)")
            .await
            .unwrap(),
        2
    );
    assert!(count(&catalog, "SELECT * FROM anomalies").await.is_err());
}

#[tokio::test]
async fn results_larger_than_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT value FROM generate_series(1, 10)";
    let limits = QueryLimits::default();
    let (_, batches) = collect_capped(dir.path(), sql, 10, limits).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    match collect_capped(dir.path(), sql, 9, limits).await {
        Err(QueryError::TooLarge(9)) => {}
        other => panic!("{:?}", other.map(|(_, b)| b.len())),
    }
}

/// Two million distinct keys: a hash table of tens of MiB, whatever the plan.
const NEEDS_MEMORY: &str =
    "SELECT count(*) AS keys FROM (SELECT DISTINCT value * 7 AS k FROM range(2000000))";

#[tokio::test]
async fn a_query_over_its_memory_pool_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let tight = QueryLimits {
        memory_limit_mb: 4,
        ..QueryLimits::default()
    };
    match collect_capped(dir.path(), NEEDS_MEMORY, 10, tight).await {
        Err(e @ QueryError::MemoryExceeded { limit_mb: 4, .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("4 MiB") && message.contains("[query] memory_limit_mb"),
                "{message}"
            );
            assert_eq!(e.domain(), gaveurs_schemas::ErrorDomain::User);
        }
        other => panic!("{:?}", other.map(|(_, b)| b.len())),
    }
    // The same query fits the default pool: the refusal above is the pool's.
    let (_, batches) = collect_capped(dir.path(), NEEDS_MEMORY, 10, QueryLimits::default())
        .await
        .unwrap();
    let keys = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(keys, 2_000_000);
}

#[tokio::test]
async fn a_query_past_its_time_is_cancelled_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = QueryLimits {
        timeout_s: 1,
        ..QueryLimits::default()
    };
    match run(
        dir.path(),
        "SELECT sum(value % 7) FROM range(1000000000000)",
        Format::Csv,
        std::io::sink(),
        limits,
    )
    .await
    {
        Err(e @ QueryError::TimedOut { limit_s: 1 }) => {
            assert!(e.to_string().contains("[query] timeout_s"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// Between a compaction's rename and the deletion of its inputs (here: a crash there), the
/// folder holds every row twice; the catalog reads each once.
#[tokio::test]
async fn files_a_compaction_has_merged_are_not_read_again() {
    use std::sync::atomic::AtomicBool;

    use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use gaveurs_sinks::parquet::compact::{self, CompactOptions, Step};
    use gaveurs_sinks::parquet::derived::DerivedWriter;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("code_lot", DataType::Utf8, false),
        Field::new("itm", DataType::Float64, true),
        Field::new(
            "_computed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let mut writer = DerivedWriter::new(root.clone(), "i1".into());
    let partition = gaveurs_schemas::datasets::Partition {
        date: chrono::NaiveDate::from_ymd_opt(2026, 1, 20).unwrap(),
        site: "LL".into(),
    };
    for (n, lot) in ["LL1", "LL2", "LL1"].into_iter().enumerate() {
        writer.append(
            LOT_KPIS,
            partition.clone(),
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec![lot])),
                    Arc::new(Float64Array::from(vec![3.0 + n as f64])),
                    Arc::new(
                        TimestampMicrosecondArray::from(vec![n as i64 * 1_000_000])
                            .with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap(),
        );
        writer.flush().unwrap();
    }
    let options = CompactOptions {
        root: root.clone(),
        state_dir: dir.path().join("instances/i1/parquet"),
        instance_id: "i1".into(),
        compact: true,
        compact_after: std::time::Duration::ZERO,
        max_file_bytes: 1 << 30,
        retention_days: Default::default(),
        interval: std::time::Duration::from_secs(60),
    };
    let stop = AtomicBool::new(false);
    compact::run_with_crash(&options, chrono::Utc::now(), &stop, &|step| {
        step == Step::Renamed
    })
    .unwrap();
    let folder = root.join("lot_kpis/date=2026-01-20/site=LL");
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 4);

    let counts = |sql: &'static str| {
        let root = root.clone();
        async move {
            let catalog = Catalog::open(&root).await.unwrap();
            let batches = catalog.sql(sql).await.unwrap().collect().await.unwrap();
            arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string()
        }
    };
    let sql = "SELECT (SELECT count(*) FROM lot_kpis_history) AS history, \
               (SELECT count(*) FROM lot_kpis) AS lots, \
               (SELECT itm FROM lot_kpis WHERE code_lot = 'LL1') AS ll1";
    let expected = "| 3       | 2    | 5.0 |";
    let during = counts(sql).await;
    assert!(during.contains(expected), "{during}");

    // The next pass removes the leftovers; the answer stays the same.
    let report = compact::run_once(&options, chrono::Utc::now(), &stop).unwrap();
    assert_eq!(report.leftovers_removed, 3);
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1);
    let after = counts(sql).await;
    assert!(after.contains(expected), "{after}");
}

/// The error of a query whose file a compaction deleted after the listing is recognised, so
/// `run` and `collect_capped` list again instead of failing.
#[tokio::test]
async fn a_file_deleted_after_the_listing_is_recognised_as_vanished() {
    use arrow::array::{Int64Array, RecordBatch};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("parquet");
    let folder = root.join("ledger/date=2026-01-20/site=LL");
    std::fs::create_dir_all(&folder).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "entry",
        DataType::Int64,
        false,
    )]));
    // Large enough that reading the footer does not fetch the whole file (a small file's
    // bytes come with its footer, which the catalog has already read).
    for n in 1..=2 {
        let values: Vec<i64> = (0..400_000).map(|k| n * 1_000_003 + k * 7_919).collect();
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        let file = std::fs::File::create(folder.join(format!("x-{n}.parquet"))).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    // The listing is made (and kept) when the catalog opens and the query is planned.
    let catalog = Catalog::open(&root).await.unwrap();
    let frame = catalog.sql("SELECT entry FROM ledger").await.unwrap();
    std::fs::remove_file(folder.join("x-2.parquet")).unwrap();
    let error = QueryError::from(frame.collect().await.unwrap_err());
    assert!(vanished(&error), "{error}");
    // Listed again, the query answers.
    let (_, batches) = collect_capped(
        &root,
        "SELECT count(*) AS n FROM ledger",
        10,
        QueryLimits::default(),
    )
    .await
    .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("| 400000 |"), "{text}");
    assert!(!vanished(&QueryError::Failed("a corrupt footer".into())));
}
