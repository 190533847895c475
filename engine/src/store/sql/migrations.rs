//! The schema's migrations, one folder per database.

pub(super) static SQLITE_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("../migrations/sqlite");
pub(super) static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[cfg(test)]
mod tests {
    #[test]
    fn both_databases_have_the_same_migration_files() {
        let names = |db: &str| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/").to_string() + db;
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let sqlite = names("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, names("postgres"));
    }
}
