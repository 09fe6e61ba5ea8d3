//! Idempotency keys are remembered after their rows leave `outbox` (issue 12 item 1): a
//! producer that inserts a known key again never gets the event applied twice; only an
//! operator's `dead requeue` sends it again.

use std::time::Duration;

use outbox_core::event::EventType;
use outbox_core::store::{DeadKind, Engine, Store};
use outboxd_e2e::Env;
use platform_sim::config::DEMO_EPEIS_CHANNEL_DID;
use platform_sim::{Platform, Step};
use serde_json::{json, Value};

const RUN: Duration = Duration::from_secs(60);

fn configure(env: &Env) {
    env.write_config(&format!(
        r#"
[sinks.epeis]
type = "epeis"
url = "{}"
channel_did = "{DEMO_EPEIS_CHANNEL_DID}"
register_did = "RG00000000000001"
account_did = "AC00000000000001"
secret_env = "TEST_EPEIS_KEY"
timeout = "1s"
connect_timeout = "1s"
"#,
        env.sim.epeis_url()
    ));
}

fn dosage(aid: &str, cons: f64) -> Value {
    json!({
        "COM_METERAGE": {"SETTLEMENT_AID": aid, "NORMAL_RETRO_TYPE": "2"},
        "COM_METER_INFO_TMP": [{
            "DEVICE_DID": "DV00000000000001",
            "NORMAL_RETRO_TYPE": "2",
            "ENERGY_FLOW_TYPE": "1",
            "READINGS_TYPE": "1",
            "ADDED_CONS": cons
        }]
    })
}

/// A producer's own plain `INSERT` (no `ON CONFLICT`), as a script would write it.
async fn producer_insert(store: &Store, key: &str, payload: &Value) {
    let sql = "INSERT INTO outbox (sink, event_type, idempotency_key, payload) \
               VALUES ('epeis', 'dosage', ?1, ?2)";
    let Engine::Sqlite(s) = store.engine() else {
        panic!("a SQLite env")
    };
    sqlx::query(sql)
        .bind(key)
        .bind(payload.to_string())
        .execute(s.pool())
        .await
        .expect("a plain INSERT of a known key is no error");
}

#[tokio::test]
async fn an_outcome_unknown_epeis_row_inserted_again_is_not_sent_again() {
    let env = Env::sqlite().await;
    configure(&env);
    let store = env.store().await;
    // Applied, then the connection closes without a reply: parked as outcome unknown.
    env.sim.script_epeis("SA-AGAIN", vec![Step::drop_after()]);
    env.enqueue(
        &store,
        "epeis",
        EventType::Dosage,
        "SA-AGAIN",
        &dosage("SA-AGAIN", 12.5),
    )
    .await;
    env.run_until_idle(RUN).await;
    assert_eq!(env.sim.request_count(Platform::Epeis, "SA-AGAIN"), 1);
    let dead = store
        .dead_list(Some("epeis"), None, None, 10)
        .await
        .unwrap()
        .pop()
        .expect("dead-lettered");
    assert_eq!(dead.kind, DeadKind::Unknown);

    // The producer sends the key again: as it was, then corrected.
    producer_insert(&store, "SA-AGAIN", &dosage("SA-AGAIN", 12.5)).await;
    producer_insert(&store, "SA-AGAIN", &dosage("SA-AGAIN", 7.0)).await;
    env.run_until_idle(RUN).await;
    assert_eq!(
        env.sim.request_count(Platform::Epeis, "SA-AGAIN"),
        1,
        "a known key is never sent by a producer's insert"
    );
    assert_eq!(env.sim.applied_count(Platform::Epeis, "SA-AGAIN"), 1);
    let status = env.outboxd().args(["status", "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let epeis = status
        .as_array()
        .or_else(|| status["sinks"].as_array())
        .expect("a list of sinks")
        .iter()
        .find(|s| s["sink"] == "epeis")
        .expect("epeis in status")
        .clone();
    assert_eq!(epeis["ignored_reinserts"], 2, "{epeis}");
    let show = env
        .outboxd()
        .args(["dead", "show", &dead.id.to_string()])
        .output()
        .unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("correction"), "{show}");
    assert!(show.contains("7.0"), "{show}");

    // The operator's requeue, with the correction, is the one way to send it again.
    let out = env
        .outboxd()
        .args([
            "dead",
            "requeue",
            &dead.id.to_string(),
            "--force",
            "--latest",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.run_until_idle(RUN).await;
    let sent: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.platform == Platform::Epeis && r.key.as_deref() == Some("SA-AGAIN"))
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1].params["COM_METER_INFO_TMP"][0]["ADDED_CONS"],
        json!(7.0),
        "the correction was sent"
    );
    store.close().await;
}
