//! The token lifecycle's contract cases (migration 0011), on both databases.

use super::*;

fn used(name: &str, at: DateTime<Utc>) -> TokenUsed {
    TokenUsed {
        name: name.into(),
        at,
    }
}

async fn tokens_expire_are_listed_without_secrets_and_revoked_at_once(db: TestDb) {
    let s = db.store;
    assert!(
        s.create_token("ops", Role::Operator, "h-ops", at(0), None)
            .await
            .unwrap()
    );
    assert!(
        s.create_token("temp", Role::Viewer, "h-temp", at(0), Some(at(3600)))
            .await
            .unwrap()
    );
    // A name is unique.
    assert!(
        !s.create_token("ops", Role::Admin, "h-other", at(1), None)
            .await
            .unwrap()
    );
    assert_eq!(
        s.token_role("h-temp", at(3599)).await.unwrap(),
        Some(TokenGrant {
            name: "temp".to_string(),
            role: Role::Viewer
        })
    );
    assert_eq!(
        s.token_role("h-temp", at(3600)).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        s.token_role("h-ops", at(1_000_000)).await.unwrap(),
        Some(TokenGrant {
            name: "ops".to_string(),
            role: Role::Operator
        })
    );
    assert_eq!(s.token_role("h-unknown", at(0)).await.unwrap(), None);

    // Last use is recorded in batches and never moves back.
    s.touch_tokens(&[used("ops", at(50)), used("temp", at(20))])
        .await
        .unwrap();
    s.touch_tokens(&[used("ops", at(40)), used("gone", at(60))])
        .await
        .unwrap();
    let listed = s.list_tokens().await.unwrap();
    assert_eq!(
        listed,
        vec![
            TokenInfo {
                name: "ops".into(),
                role: Role::Operator,
                created_at: at(0),
                last_used_at: Some(at(50)),
                expires_at: None,
            },
            TokenInfo {
                name: "temp".into(),
                role: Role::Viewer,
                created_at: at(0),
                last_used_at: Some(at(20)),
                expires_at: Some(at(3600)),
            },
        ]
    );

    assert!(s.revoke_token("ops").await.unwrap());
    assert!(!s.revoke_token("ops").await.unwrap());
    assert_eq!(
        s.token_role("h-ops", at(60)).await.unwrap(),
        None,
        "revoked"
    );
    // The name is free again.
    assert!(
        s.create_token("ops", Role::Viewer, "h-ops2", at(70), None)
            .await
            .unwrap()
    );
}

/// One budget per key in the database: spends from any number of connections at once (as from
/// several servers) never pass the burst, a refused request spends nothing and learns how long
/// to wait, and the budget refills at the emission rate.
async fn rate_budgets_are_shared_and_refill(db: TestDb) {
    let s = db.store;
    let ask = |key: &str, secs: i64| RateAsk {
        key: key.into(),
        now: at(0) + Duration::seconds(secs),
        emission: std::time::Duration::from_secs(1),
        burst: 5,
    };
    let spends = (0..20).map(|_| {
        let s = s.clone();
        let a = ask("ci", 0);
        tokio::spawn(async move { s.spend_rate(&a).await.unwrap() })
    });
    let mut allowed = 0;
    for sp in spends.collect::<Vec<_>>() {
        allowed += (sp.await.unwrap() == RateAnswer::Allowed) as usize;
    }
    assert_eq!(allowed, 5, "a burst of five, whoever asks");
    assert_eq!(
        s.spend_rate(&ask("ci", 0)).await.unwrap(),
        RateAnswer::Wait(std::time::Duration::from_secs(1))
    );
    assert_eq!(
        s.spend_rate(&ask("other", 0)).await.unwrap(),
        RateAnswer::Allowed,
        "each key has its own budget"
    );
    // One emission later, one request fits, and the next waits a full emission again.
    assert_eq!(
        s.spend_rate(&ask("ci", 1)).await.unwrap(),
        RateAnswer::Allowed
    );
    assert_eq!(
        s.spend_rate(&ask("ci", 1)).await.unwrap(),
        RateAnswer::Wait(std::time::Duration::from_secs(1))
    );
    // Long idle: the budget is full again, and no fuller than the burst.
    let later: Vec<RateAnswer> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(s.spend_rate(&ask("ci", 600)).await.unwrap());
        }
        v
    };
    assert_eq!(
        later.iter().filter(|a| **a == RateAnswer::Allowed).count(),
        5,
        "{later:?}"
    );
}

contract!(
    tokens_expire_are_listed_without_secrets_and_revoked_at_once,
    rate_budgets_are_shared_and_refill
);
