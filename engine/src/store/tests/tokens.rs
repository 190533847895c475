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

contract!(tokens_expire_are_listed_without_secrets_and_revoked_at_once);
