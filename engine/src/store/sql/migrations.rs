//! The schema's migrations, one folder per database, kept equivalent by the tests below.

pub(super) static SQLITE_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("../migrations/sqlite");
pub(super) static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// A line in which the two folders may differ, because the databases need different text for
    /// the same schema.
    struct Difference {
        file: &'static str,
        sqlite: &'static str,
        postgres: &'static str,
    }

    /// Each entry must still occur, so the list cannot outlive its reason.
    const PERMITTED_DIFFERENCES: &[Difference] = &[
        // An id the database assigns: SQLite's AUTOINCREMENT rowid, PostgreSQL's identity. No
        // DDL says it for both, and computing MAX(id) + 1 would collide under concurrent writers.
        Difference {
            file: "0014_datasets.sql",
            sqlite: "    id               INTEGER PRIMARY KEY AUTOINCREMENT,",
            postgres: "    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,",
        },
    ];

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Compares two migration folders line by line: what differs, beyond `permitted`.
    fn differences(sqlite: &Path, postgres: &Path, permitted: &[Difference]) -> Vec<String> {
        let files = names(sqlite);
        if files != names(postgres) {
            return vec![format!(
                "the folders hold other files: {files:?} / {:?}",
                names(postgres)
            )];
        }
        let mut found = Vec::new();
        let mut seen = vec![false; permitted.len()];
        for file in &files {
            let read = |dir: &Path| std::fs::read_to_string(dir.join(file)).unwrap();
            let (s_text, p_text) = (read(sqlite), read(postgres));
            let (s_lines, p_lines): (Vec<&str>, Vec<&str>) =
                (s_text.split('\n').collect(), p_text.split('\n').collect());
            if s_lines.len() != p_lines.len() {
                found.push(format!("{file}: the two versions differ in length"));
                continue;
            }
            for (n, (s, p)) in s_lines.iter().zip(&p_lines).enumerate() {
                if s == p {
                    continue;
                }
                match permitted
                    .iter()
                    .position(|d| d.file == file.as_str() && d.sqlite == *s && d.postgres == *p)
                {
                    Some(i) => seen[i] = true,
                    None => found.push(format!(
                        "{file}:{}: not a permitted difference:\n  sqlite:   {s}\n  postgres: {p}",
                        n + 1
                    )),
                }
            }
        }
        for (d, seen) in permitted.iter().zip(seen) {
            if !seen {
                found.push(format!(
                    "{}: the permitted difference {:?} / {:?} no longer occurs",
                    d.file, d.sqlite, d.postgres
                ));
            }
        }
        found
    }

    #[test]
    fn both_databases_have_the_same_migrations_line_for_line() {
        let folder = |db: &str| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(db)
        };
        assert!(!names(&folder("sqlite")).is_empty());
        let found = differences(
            &folder("sqlite"),
            &folder("postgres"),
            PERMITTED_DIFFERENCES,
        );
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    #[test]
    fn a_difference_is_refused_unless_permitted_and_a_permission_must_be_used() {
        let dir = tempfile::tempdir().unwrap();
        let (sqlite, postgres) = (dir.path().join("sqlite"), dir.path().join("postgres"));
        for (db, ty) in [(&sqlite, "INTEGER"), (&postgres, "BIGINT")] {
            std::fs::create_dir(db).unwrap();
            std::fs::write(
                db.join("0001_t.sql"),
                format!("CREATE TABLE t (\n  n {ty}\n);\n"),
            )
            .unwrap();
        }
        let found = differences(&sqlite, &postgres, &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("0001_t.sql:2: "), "{found:?}");

        let bigint = Difference {
            file: "0001_t.sql",
            sqlite: "  n INTEGER",
            postgres: "  n BIGINT",
        };
        assert_eq!(
            differences(&sqlite, &postgres, &[bigint]),
            Vec::<String>::new()
        );

        let unused = Difference {
            file: "0001_t.sql",
            sqlite: "  m INTEGER",
            postgres: "  m BIGINT",
        };
        let found = differences(&sqlite, &sqlite, &[unused]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("no longer occurs"), "{found:?}");
    }
}
