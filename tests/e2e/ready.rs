//! `GET /api/v1/ready`: ready when the database answers and its schema is this build's; 503
//! otherwise (issue 21, point 9).

use crate::api_server::Server;
use crate::harness::*;

#[test]
fn ready_needs_the_database_at_this_builds_schema() {
    each_db(|env, db| {
        let server = Server::start(&env, "server");
        let ready = server.call("GET", "/api/v1/ready", None, None).ok();
        assert_eq!(ready["status"], "ready", "{db:?}: {ready:#}");
        assert_eq!(ready["database"], "ok");
        let expected = ready["schema_expected"].as_i64().unwrap();
        assert!(expected >= 11, "{ready:#}");
        assert_eq!(ready["schema_applied"].as_i64(), Some(expected));
        // A schema behind the build (a migration not applied): not ready, and why.
        if env
            .psql("DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)")
            .is_some()
        {
            let answer = server.call("GET", "/api/v1/ready", None, None);
            assert_eq!(answer.status, 503, "{db:?}: {:#}", answer.body);
            assert_eq!(answer.body["status"], "not_ready");
            assert_eq!(answer.body["database"], "ok");
            assert_eq!(answer.body["schema_applied"].as_i64(), Some(expected - 1));
        }
        server.stop();
    });
}
