//! The statements a load runs, as text: pure, so the exact SQL sent to Redshift (which the tests
//! cannot reach) is checked here word for word. Every name arrives quoted by the caller
//! ([`super::quote_ident`], [`super::quote_table`]); every literal goes through [`literal`].

use flow_engine::operator::OperatorError;

use crate::error::fatal;

/// The quoted names a load's statements are made of.
pub struct Names<'a> {
    /// The target table, `"schema"."table"`.
    pub table: &'a str,
    /// The session's stage table.
    pub stage: &'a str,
    /// The file's columns, in the file's order.
    pub columns: &'a [String],
    /// The merge key's columns (empty unless the mode is merge).
    pub key: &'a [String],
}

fn list(columns: &[String]) -> String {
    columns.join(", ")
}

fn qualified(table: &str, columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("{table}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A SQL string literal. Redshift reads a backslash in a literal as an escape, so rather than
/// guess every server's rules, a value with a quote, a backslash or a control character is
/// refused: S3 URLs and role ARNs never need them.
pub fn literal(what: &str, value: &str) -> Result<String, OperatorError> {
    if value
        .chars()
        .any(|c| c == '\'' || c == '\\' || c.is_control())
    {
        return Err(fatal(format!(
            "{what} `{}` holds a quote, a backslash or a control character",
            value.escape_debug()
        )));
    }
    Ok(format!("'{value}'"))
}

/// A session table with the file's columns, in the file's order, typed as the target's: Redshift's
/// COPY from parquet fills a table's columns by position and needs their count to match.
pub fn create_stage(n: &Names) -> String {
    format!(
        "CREATE TEMP TABLE {} AS SELECT {} FROM {} WHERE 1 = 0",
        n.stage,
        list(n.columns),
        n.table
    )
}

/// PostgreSQL's load: CSV sent on the connection itself.
pub fn copy_from_stdin(table: &str, columns: &[String]) -> String {
    format!(
        "COPY {table} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)",
        list(columns)
    )
}

/// Redshift's load: every parquet file under the stage prefix, read with the cluster's role.
pub fn redshift_copy(stage: &str, prefix: &str, iam_role: &str) -> Result<String, OperatorError> {
    Ok(format!(
        "COPY {stage} FROM {} IAM_ROLE {} FORMAT AS PARQUET",
        literal("the stage", prefix)?,
        literal("iam_role", iam_role)?
    ))
}

pub fn delete_all(table: &str) -> String {
    format!("DELETE FROM {table}")
}

/// Append (and replace, after [`delete_all`]) from the stage.
pub fn insert_from_stage(n: &Names) -> String {
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {}",
        n.table,
        list(n.columns),
        list(n.columns),
        n.stage
    )
}

/// Upsert from the stage on the key: a row whose key is in the table updates it, any other is
/// inserted. The target is named in full rather than aliased (Redshift's MERGE takes no alias
/// for it), and a key of every column updates the key to itself, since Redshift wants both
/// clauses.
pub fn merge(n: &Names) -> String {
    let on = n
        .key
        .iter()
        .map(|k| format!("{}.{k} = {}.{k}", n.table, n.stage))
        .collect::<Vec<_>>()
        .join(" AND ");
    let rest: Vec<&String> = n.columns.iter().filter(|c| !n.key.contains(c)).collect();
    let set_of = if rest.is_empty() {
        n.key.iter().collect()
    } else {
        rest
    };
    let set = set_of
        .iter()
        .map(|c| format!("{c} = {}.{c}", n.stage))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "MERGE INTO {} USING {} ON {on} WHEN MATCHED THEN UPDATE SET {set} \
         WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
        n.table,
        n.stage,
        list(n.columns),
        qualified(n.stage, n.columns)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|c| format!("\"{c}\"")).collect()
    }

    #[test]
    fn redshift_loads_its_stage_by_position_then_merges_on_the_key() {
        let columns = cols(&["user_id", "score"]);
        let key = cols(&["user_id"]);
        let n = Names {
            table: "\"analytics\".\"predictions\"",
            stage: "\"flow_stage\"",
            columns: &columns,
            key: &key,
        };
        assert_eq!(
            create_stage(&n),
            "CREATE TEMP TABLE \"flow_stage\" AS SELECT \"user_id\", \"score\" \
             FROM \"analytics\".\"predictions\" WHERE 1 = 0"
        );
        assert_eq!(
            redshift_copy(
                "\"flow_stage\"",
                "s3://b/stage/0f3a/",
                "arn:aws:iam::123456789012:role/load"
            )
            .unwrap(),
            "COPY \"flow_stage\" FROM 's3://b/stage/0f3a/' \
             IAM_ROLE 'arn:aws:iam::123456789012:role/load' FORMAT AS PARQUET"
        );
        assert_eq!(
            merge(&n),
            "MERGE INTO \"analytics\".\"predictions\" USING \"flow_stage\" \
             ON \"analytics\".\"predictions\".\"user_id\" = \"flow_stage\".\"user_id\" \
             WHEN MATCHED THEN UPDATE SET \"score\" = \"flow_stage\".\"score\" \
             WHEN NOT MATCHED THEN INSERT (\"user_id\", \"score\") \
             VALUES (\"flow_stage\".\"user_id\", \"flow_stage\".\"score\")"
        );
        assert_eq!(
            insert_from_stage(&n),
            "INSERT INTO \"analytics\".\"predictions\" (\"user_id\", \"score\") \
             SELECT \"user_id\", \"score\" FROM \"flow_stage\""
        );
        assert_eq!(
            delete_all(n.table),
            "DELETE FROM \"analytics\".\"predictions\""
        );
    }

    #[test]
    fn a_key_of_every_column_still_gives_both_clauses() {
        let columns = cols(&["a", "b"]);
        let n = Names {
            table: "\"t\"",
            stage: "\"s\"",
            columns: &columns,
            key: &columns,
        };
        assert_eq!(
            merge(&n),
            "MERGE INTO \"t\" USING \"s\" ON \"t\".\"a\" = \"s\".\"a\" AND \"t\".\"b\" = \"s\".\"b\" \
             WHEN MATCHED THEN UPDATE SET \"a\" = \"s\".\"a\", \"b\" = \"s\".\"b\" \
             WHEN NOT MATCHED THEN INSERT (\"a\", \"b\") VALUES (\"s\".\"a\", \"s\".\"b\")"
        );
    }

    #[test]
    fn literals_refuse_what_could_end_or_escape_them() {
        assert_eq!(literal("x", "s3://b/p/").unwrap(), "'s3://b/p/'");
        for bad in ["s3://b/'; DROP TABLE t; --", "s3://b/\\'", "s3://b/\n"] {
            let err = redshift_copy("\"s\"", bad, "arn").unwrap_err().to_string();
            assert!(err.contains("the stage"), "{err}");
        }
        assert!(redshift_copy("\"s\"", "s3://b/", "arn'x").is_err());
    }
}
