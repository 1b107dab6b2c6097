//! Agent authentication against a real Elasticsearch with security on: what makes a key an
//! accepted enrollment key, how refusals are told apart, and what the cache costs and bounds
//! (one verification per key per TTL, shared by concurrent first requests; refusals briefly;
//! outages never).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::future::join_all;
use opamp_store::Secret;
use opamp_store::elasticsearch::EsConfig;
use opamp_store::elasticsearch::enrollment::{
    ApiKey, AuthCacheConfig, AuthError, AuthStats, EnrollmentAuth, MAX_REFUSAL_TTL, Refusal,
};
use opamp_store::secured_cluster::SecuredCluster;
use serde_json::json;

async fn bounded<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test).await.unwrap_or_else(|_| panic!("test exceeded {limit:?}"))
}

fn checker(cluster: &SecuredCluster, ttl: Duration) -> EnrollmentAuth {
    let cache = AuthCacheConfig { ttl, ..AuthCacheConfig::DEFAULT };
    EnrollmentAuth::new(&cluster.es_config(".fleet-agents"), cache).expect("checker builds")
}

fn calls(stats: AuthStats) -> (u64, u64) {
    (stats.authenticate_requests, stats.enrollment_lookups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_costs_one_verification_per_ttl() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(Duration::from_secs(60), async |cluster| {
            let key = cluster.api_key("opampd-test-cost").await;
            cluster.enroll(&key, "policy-cost", &["default", "team-a"]).await;
            let ttl = Duration::from_secs(3);
            let auth = checker(cluster, ttl);
            let api_key = key.api_key();

            // concurrent first requests share one verification
            let first = join_all((0..50).map(|_| auth.authenticate(&api_key))).await;
            for result in &first {
                let enrollment = result.as_ref().expect("an active enrollment key is accepted");
                assert_eq!(enrollment.api_key_id, key.id);
                assert_eq!(enrollment.policy_id, "policy-cost");
                assert_eq!(enrollment.namespaces, ["default", "team-a"]);
            }
            assert_eq!(
                calls(auth.stats()),
                (1, 1),
                "50 concurrent first requests: one verification"
            );

            // within the TTL every request is a cache hit
            let started = Instant::now();
            let n = 10_000;
            for _ in 0..n {
                auth.authenticate(&api_key).await.expect("cached");
            }
            let per_request = started.elapsed() / n;
            assert_eq!(calls(auth.stats()), (1, 1), "{n} more requests within the TTL: no call");
            eprintln!(
                "auth cost: {} requests with one key within the TTL made {:?} (authenticate, \
             enrollment lookup) elasticsearch calls; a cached check took {per_request:?}",
                n + 50,
                calls(auth.stats())
            );

            // after the TTL the key is verified again, once
            tokio::time::sleep(ttl + Duration::from_millis(200)).await;
            join_all((0..20).map(|_| auth.authenticate(&api_key))).await;
            assert_eq!(calls(auth.stats()), (2, 2), "one verification per TTL");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_what_is_wrong() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster.run(Duration::from_secs(60), async |cluster| {
        let auth = checker(cluster, Duration::from_secs(60));
        let refused = |r: Result<_, AuthError>| match r {
            Err(AuthError::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        };

        let plain = cluster.api_key("opampd-test-plain").await;
        assert_eq!(refused(auth.authenticate(&plain.api_key()).await), Refusal::NotEnrollmentKey);
        // a refusal is cached too, briefly: asking again at once costs nothing
        let before = calls(auth.stats());
        assert_eq!(refused(auth.authenticate(&plain.api_key()).await), Refusal::NotEnrollmentKey);
        assert_eq!(calls(auth.stats()), before, "a cached refusal makes no call");

        let inactive = cluster.api_key("opampd-test-inactive").await;
        cluster.put_enrollment(&inactive, json!({ "active": false, "policy_id": "p" })).await;
        assert_eq!(refused(auth.authenticate(&inactive.api_key()).await), Refusal::Inactive);

        let expired = cluster.api_key("opampd-test-expired").await;
        let past = json!({ "active": true, "policy_id": "p", "expire_at": "2020-01-01T00:00:00Z" });
        cluster.put_enrollment(&expired, past).await;
        assert_eq!(refused(auth.authenticate(&expired.api_key()).await), Refusal::Expired);

        let later = cluster.api_key("opampd-test-later").await;
        let future =
            json!({ "active": true, "policy_id": "p", "expire_at": "2099-01-01T00:00:00.000Z" });
        cluster.put_enrollment(&later, future).await;
        assert_eq!(
            auth.authenticate(&later.api_key()).await.expect("not expired yet").policy_id,
            "p"
        );

        let enrolled = cluster.api_key("opampd-test-wrong-secret").await;
        cluster.enroll(&enrolled, "p", &[]).await;
        let wrong = ApiKey::new(enrolled.id.clone(), Secret::new("not-the-secret")).unwrap();
        assert_eq!(refused(auth.authenticate(&wrong).await), Refusal::NotAuthenticated);
        assert!(auth.authenticate(&enrolled.api_key()).await.is_ok(), "the right secret works");

        let unknown = ApiKey::new("no-such-key-id", Secret::new("whatever")).unwrap();
        assert_eq!(refused(auth.authenticate(&unknown).await), Refusal::NotAuthenticated);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_deactivated_keys_stop_within_the_ttl() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(Duration::from_secs(60), async |cluster| {
            let ttl = Duration::from_secs(1);
            let auth = checker(cluster, ttl);
            let deactivated = cluster.api_key("opampd-test-deactivated").await;
            cluster.enroll(&deactivated, "p", &[]).await;
            let revoked = cluster.api_key("opampd-test-revoked").await;
            cluster.enroll(&revoked, "p", &[]).await;
            for key in [&deactivated, &revoked] {
                auth.authenticate(&key.api_key()).await.expect("accepted at first");
            }

            cluster.update_enrollment(&deactivated, json!({ "active": false })).await;
            cluster.invalidate(&revoked).await;
            tokio::time::sleep(ttl + Duration::from_millis(200)).await;
            assert_eq!(
                auth.authenticate(&deactivated.api_key()).await.unwrap_err(),
                AuthError::Refused(Refusal::Inactive)
            );
            assert_eq!(
                auth.authenticate(&revoked.api_key()).await.unwrap_err(),
                AuthError::Refused(Refusal::NotAuthenticated)
            );
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_expires_after_the_refusal_ttl() {
    let Some(cluster) = SecuredCluster::connect().await else { return };
    cluster
        .run(Duration::from_secs(60), async |cluster| {
            let auth = checker(cluster, Duration::from_secs(600));
            let key = cluster.api_key("opampd-test-late-enrollment").await;
            let refused = auth.authenticate(&key.api_key()).await.unwrap_err();
            assert_eq!(refused, AuthError::Refused(Refusal::NotEnrollmentKey));
            cluster.enroll(&key, "p", &[]).await;
            assert!(auth.authenticate(&key.api_key()).await.is_err(), "refusal still cached");
            tokio::time::sleep(MAX_REFUSAL_TTL + Duration::from_millis(200)).await;
            assert!(auth.authenticate(&key.api_key()).await.is_ok(), "enrolled key accepted");
        })
        .await;
}

/// Needs no cluster: nothing listens on the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_and_never_cached() {
    bounded(Duration::from_secs(30), async {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut es = EsConfig::new(format!("http://{closed}").parse().unwrap());
        es.request_timeout = Duration::from_secs(2);
        let auth = EnrollmentAuth::new(&es, AuthCacheConfig::DEFAULT).unwrap();
        let key = ApiKey::new("kid", Secret::new("s3cr3t-value")).unwrap();
        for attempt in 1..=3 {
            match auth.authenticate(&key).await {
                Err(AuthError::Unavailable(why)) => {
                    assert!(!why.contains("s3cr3t-value"), "{why}");
                }
                other => panic!("expected unavailable, got {other:?}"),
            }
            assert_eq!(auth.stats().authenticate_requests, attempt, "each attempt asks again");
        }
        assert!(!format!("{auth:?}").contains("s3cr3t-value"));
    })
    .await;
}
