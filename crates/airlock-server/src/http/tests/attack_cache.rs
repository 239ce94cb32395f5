//! Caches tenants could grow: memory templates only for the operator's
//! shapes (a request rounds up to one, within its quota, or boots cold),
//! and a package list another request is installing answered as busy
//! (503: retry later).
//! The fakes stand for the sources: `fakes.template` serves what would
//! restore (and build) a template, `fakes.cold` what boots cold.

use super::{Harness, KEY_A};
use crate::config::{CacheConfig, ServerConfig, ShapeSpec};
use crate::quota::Quotas;
use axum::http::StatusCode;
use serde_json::json;

/// A server whose templates are the python image at 512 MiB and at 1 GiB
/// with 2 vCPUs, and whose tenants may have 1.5 GiB.
fn two_shapes() -> Harness {
    Harness::with_template_fakes(ServerConfig {
        cache: CacheConfig {
            template_shapes: Some(vec![
                ShapeSpec {
                    image: airlock::Image::Python,
                    memory_mib: 512,
                    vcpus: 1,
                    disk_mib: airlock::spec::DEFAULT_DISK_MIB,
                },
                ShapeSpec {
                    image: airlock::Image::Python,
                    memory_mib: 1024,
                    vcpus: 2,
                    disk_mib: airlock::spec::DEFAULT_DISK_MIB,
                },
            ]),
            ..CacheConfig::default()
        },
        quotas: Quotas {
            memory_mib: 1536,
            ..Quotas::default()
        },
        ..ServerConfig::default()
    })
}

/// (memory, vCPUs) of every VM `source` served.
fn shapes_served(source: &airlock::testing::FakeVmSource) -> Vec<(u32, u32)> {
    source
        .acquired()
        .iter()
        .map(|o| (o.memory_mib, o.vcpus))
        .collect()
}

#[tokio::test]
async fn a_tenant_cannot_make_the_host_keep_a_template_for_every_memory_size() {
    let h = two_shapes();
    for (memory, cpus) in [(128, 1), (300, 1), (400, 1), (512, 1), (513, 2), (900, 2)] {
        h.run(KEY_A, "1", json!({"memory_mib": memory, "cpus": cpus}))
            .await
            .ok(StatusCode::OK);
    }
    // Six sizes asked, two template shapes used: each request's memory
    // rounded up.
    assert_eq!(
        shapes_served(&h.fakes.template),
        [(512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 2)]
    );
    assert!(h.fakes.cold.acquired().is_empty());
}

#[tokio::test]
async fn a_shape_no_template_holds_boots_cold_as_asked() {
    let h = two_shapes();
    h.run(KEY_A, "1", json!({"memory_mib": 1200, "cpus": 2}))
        .await
        .ok(StatusCode::OK);
    // More memory than 512 MiB at 1 vCPU: the 1 GiB shape has 2 vCPUs,
    // which would give more CPU than asked.
    h.run(KEY_A, "1", json!({"memory_mib": 600}))
        .await
        .ok(StatusCode::OK);
    h.run(KEY_A, "1", json!({"memory_mib": 256, "cpus": 4}))
        .await
        .ok(StatusCode::OK);
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "javascript", "memory_mib": 512}),
    )
    .await
    .ok(StatusCode::CREATED);
    assert!(h.fakes.template.acquired().is_empty());
    assert_eq!(
        shapes_served(&h.fakes.cold),
        [(1200, 2), (600, 1), (256, 4), (512, 1)]
    );
}

#[tokio::test]
async fn rounding_up_never_passes_the_tenants_memory_quota() {
    let h = Harness::with_template_fakes(ServerConfig {
        quotas: Quotas {
            memory_mib: 400,
            ..Quotas::default()
        },
        ..ServerConfig::default()
    });
    // The default template shape (512 MiB) is above alice's 400 MiB.
    h.run(KEY_A, "1", json!({"memory_mib": 256}))
        .await
        .ok(StatusCode::OK);
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "python", "memory_mib": 256}),
    )
    .await
    .ok(StatusCode::CREATED);
    assert!(h.fakes.template.acquired().is_empty());
    assert_eq!(shapes_served(&h.fakes.cold), [(256, 1), (256, 1)]);
}

#[tokio::test]
async fn sessions_round_up_to_a_template_shape_too() {
    let h = two_shapes();
    let reply = h
        .post(
            KEY_A,
            "/v1/sessions",
            &json!({"language": "python", "memory_mib": 256}),
        )
        .await;
    reply.ok(StatusCode::CREATED);
    assert_eq!(shapes_served(&h.fakes.template), [(512, 1)]);
}

#[tokio::test]
async fn a_package_list_another_request_is_installing_is_503_install_busy() {
    let h = Harness::new();
    h.fakes.packages.fail_next(|| airlock::PackageError::Busy {
        packages: "six==1.16.0".into(),
        waited: std::time::Duration::from_secs(900),
    });
    let reply = h
        .run(KEY_A, "1", json!({"packages": ["six==1.16.0"]}))
        .await;
    let message = reply.error(503, "install_busy");
    assert!(message.contains("six==1.16.0"), "{message}");
    assert!(h.fakes.cold.acquired().is_empty(), "no VM for a busy layer");
}
