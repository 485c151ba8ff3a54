//! The outbox table and its publication: the table exists with every mapped column and the
//! relay's role may read it, and the publication covers it (every mapped column, every row),
//! publishes inserts, and nothing the relay would only have to ignore.

use super::connection::ident;
use crate::doctor::check::{Check, Findings, Server, Status};
use crate::error::Result;
use crate::source::{Control, SourceSettings};

const PG: Server = Server::Postgres;

/// The `table`, `columns`, `select` and `publication` lines.
pub(super) async fn check(
    control: &Control,
    s: &SourceSettings,
    out: &mut Vec<Check>,
) -> Result<()> {
    let db = control.client();
    let table = format!("{}.{}", s.table_schema, s.table_name);
    let qualified = format!("{}.{}", ident(&s.table_schema), ident(&s.table_name));
    let row = db
        .query_opt(
            "SELECT has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&s.table_schema, &s.table_name],
        )
        .await
        .map_err(|e| control.err("reading pg_class", e))?;
    let table_exists = row.is_some();
    match row {
        None => {
            out.push(Check::fail(
                PG,
                "table",
                format!("table {table} does not exist in database {:?}", s.dbname),
                "create it (sql/001_outbox.sql), or set outbox.table to the outbox's schema.name",
            ));
            out.push(Check::skip(PG, "columns", "the table does not exist"));
            out.push(Check::skip(PG, "select", "the table does not exist"));
        }
        Some(r) => {
            out.push(Check::ok(
                PG,
                "table",
                format!("{table} exists in database {:?}", s.dbname),
            ));
            columns(control, s, &table, out).await?;
            let (usage, select): (bool, bool) = (r.get(0), r.get(1));
            out.push(if usage && select {
                Check::ok(PG, "select", format!("role {:?} may read {table}", s.user))
            } else {
                let mut grants = Vec::new();
                if !usage {
                    grants.push(format!(
                        "GRANT USAGE ON SCHEMA {} TO {};",
                        ident(&s.table_schema),
                        ident(&s.user)
                    ));
                }
                if !select {
                    grants.push(format!(
                        "GRANT SELECT ON {qualified} TO {};",
                        ident(&s.user)
                    ));
                }
                Check::fail(
                    PG,
                    "select",
                    format!(
                        "role {:?} may not read {table} (no {})",
                        s.user,
                        if usage {
                            "SELECT on the table"
                        } else {
                            "USAGE on its schema"
                        }
                    ),
                    format!("{} (sql/003_relay_role.sql)", grants.join(" ")),
                )
            });
        }
    }

    // The publication.
    out.push(publication(control, s, &table, &qualified, table_exists).await?);
    Ok(())
}

/// The mapped columns exist.
async fn columns(
    control: &Control,
    s: &SourceSettings,
    table: &str,
    out: &mut Vec<Check>,
) -> crate::error::Result<()> {
    let rows = control
        .client()
        .query(
            "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&s.table_schema, &s.table_name],
        )
        .await
        .map_err(|e| control.err("reading the outbox columns", e))?;
    let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<String> = s
        .required_columns
        .iter()
        .filter(|(_, c)| !present.contains(c))
        .map(|(key, c)| format!("{c:?} ({key})"))
        .collect();
    out.push(if missing.is_empty() {
        Check::ok(PG, "columns", format!("{table} has every mapped column"))
    } else {
        Check::fail(
            PG,
            "columns",
            format!(
                "{table} has no column {}; its columns are: {}",
                missing.join(", "),
                present.join(", ")
            ),
            "set outbox.columns.* to the table's column names",
        )
    });
    Ok(())
}

/// The publication exists, covers the table (all mapped columns, every row) and publishes
/// inserts, and nothing the relay would ignore.
async fn publication(
    control: &Control,
    s: &SourceSettings,
    table: &str,
    qualified: &str,
    table_exists: bool,
) -> crate::error::Result<Check> {
    let db = control.client();
    let p = ident(&s.publication);
    let row = db
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, puballtables FROM pg_publication WHERE pubname = $1",
            &[&s.publication],
        )
        .await
        .map_err(|e| control.err("reading pg_publication", e))?;
    let Some(row) = row else {
        return Ok(Check::fail(
            PG,
            "publication",
            format!(
                "publication {:?} does not exist in database {:?}",
                s.publication, s.dbname
            ),
            format!(
                "CREATE PUBLICATION {p} FOR TABLE {qualified} WITH (publish = 'insert') (sql/002_publication.sql), or set postgres.publication"
            ),
        ));
    };
    let (insert, update, delete, truncate, all): (bool, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let mut f = Findings::default();
    if !insert {
        f.add(
            Status::Fail,
            format!("publication {:?} does not publish inserts", s.publication),
            Some(format!("ALTER PUBLICATION {p} SET (publish = 'insert')")),
        );
    }
    if !table_exists {
        f.add(
            Status::Skip,
            format!("cannot tell whether it covers {table}: the table does not exist"),
            None,
        );
    } else {
        // Column lists and row filters exist from Postgres 15.
        let v15 = control.version() >= 150_000;
        let sql = if v15 {
            "SELECT attnames::text[], rowfilter FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3"
        } else {
            "SELECT NULL::text[], NULL::text FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3"
        };
        let covered = db
            .query_opt(sql, &[&s.publication, &s.table_schema, &s.table_name])
            .await
            .map_err(|e| control.err("reading pg_publication_tables", e))?;
        match covered {
            None => f.add(
                Status::Fail,
                format!("publication {:?} does not cover {table}", s.publication),
                Some(format!("ALTER PUBLICATION {p} ADD TABLE {qualified}")),
            ),
            Some(r) => {
                let attnames: Option<Vec<String>> = r.get(0);
                let rowfilter: Option<String> = r.get(1);
                if let Some(attnames) = attnames {
                    let missing: Vec<&str> = s
                        .required_columns
                        .iter()
                        .map(|(_, c)| c.as_str())
                        .filter(|c| !attnames.iter().any(|a| a == c))
                        .collect();
                    if !missing.is_empty() {
                        f.add(
                            Status::Fail,
                            format!("its column list leaves out {}", missing.join(", ")),
                            Some(format!(
                                "ALTER PUBLICATION {p} SET TABLE {qualified} (publish every column)"
                            )),
                        );
                    }
                }
                if let Some(filter) = rowfilter {
                    f.add(
                        Status::Warn,
                        format!("a row filter ({filter}) keeps rows that do not match it from the relay"),
                        Some(format!(
                            "ALTER PUBLICATION {p} SET TABLE {qualified} (no WHERE), unless leaving those rows out is intended"
                        )),
                    );
                }
            }
        }
    }
    let extra: Vec<&str> = [
        (update, "update"),
        (delete, "delete"),
        (truncate, "truncate"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if !extra.is_empty() {
        f.add(
            Status::Warn,
            format!(
                "it also publishes {}: the relay ignores them, but the walsender decodes and sends them",
                extra.join(", ")
            ),
            Some(format!("ALTER PUBLICATION {p} SET (publish = 'insert')")),
        );
    }
    if all {
        f.add(
            Status::Warn,
            "it is FOR ALL TABLES: every table's changes are decoded and sent to the relay, which ignores all but the outbox",
            Some(format!(
                "publish the outbox only: DROP PUBLICATION {p}; CREATE PUBLICATION {p} FOR TABLE {qualified} WITH (publish = 'insert')"
            )),
        );
    }
    Ok(f.into_check(
        PG,
        "publication",
        format!(
            "publication {:?} covers {table} and publishes inserts only",
            s.publication
        ),
    ))
}
