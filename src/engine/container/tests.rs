use super::*;

fn fixture() -> ContainerInspectResponse {
    serde_json::from_value(fixture_json()).unwrap()
}

#[test]
fn recreated_container_differs_only_in_the_data_volume() {
    let i = fixture();
    let Copy {
        body,
        networks: others,
    } = recreate_body(&i, "/var/lib/postgresql/data/", "shop_db-data-restored-x");
    let host = body.host_config.as_ref().unwrap();
    let mounts = host.mounts.as_ref().unwrap();
    assert_eq!(mounts[0].source.as_deref(), Some("shop_db-data-restored-x"));
    assert_eq!(
        mounts[1].source.as_deref(),
        Some("/srv/shop/init"),
        "other mounts untouched"
    );
    assert_eq!(
        host.restart_policy,
        i.host_config.as_ref().unwrap().restart_policy
    );
    assert_eq!(body.image.as_deref(), Some("postgres:17"));
    assert_eq!(
        body.labels,
        i.config.as_ref().unwrap().labels,
        "compose labels kept"
    );
    assert_eq!(body.healthcheck, i.config.as_ref().unwrap().healthcheck);
    assert_eq!(body.hostname, None, "the old id as hostname is not copied");
    let eps = body.networking_config.unwrap().endpoints_config.unwrap();
    let primary = &eps["shop_default"];
    assert_eq!(
        primary.aliases.as_deref(),
        Some(&["shop-db-1".to_string(), "db".to_string()][..])
    );
    assert_eq!(
        primary.ip_address, None,
        "addresses are the engine's to give"
    );
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].0, "shop_backend");
    // Binds (older compose) are rewritten too; an anonymous data volume gets an explicit mount.
    let mut i = fixture();
    let h = i.host_config.as_mut().unwrap();
    h.mounts = None;
    h.binds = Some(vec!["shop_db-data:/var/lib/postgresql/data:rw".into()]);
    let Copy { body, .. } = recreate_body(&i, "/var/lib/postgresql/data", "new");
    assert_eq!(
        body.host_config.unwrap().binds.unwrap(),
        ["new:/var/lib/postgresql/data:rw"]
    );
    let mut i = fixture();
    i.host_config.as_mut().unwrap().mounts = None;
    let Copy { body, .. } = recreate_body(&i, "/var/lib/postgresql/data", "new");
    let m = body.host_config.unwrap().mounts.unwrap();
    assert_eq!(
        (m[0].source.as_deref(), m[0].target.as_deref()),
        (Some("new"), Some("/var/lib/postgresql/data"))
    );
}
