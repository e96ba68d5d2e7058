//! End-to-end: S3 options that change requests. With S3_OBJECT_LOCK every upload carries
//! Content-MD5 (Garage checks it, so a wrong digest would fail the backup); S3_STORAGE_CLASS is
//! sent with each object; S3_PREFIX puts everything under the prefix.

mod common;

use common::{stderr, stdout};

#[test]
fn object_lock_md5_storage_class_and_prefix() {
    let s = stack!();
    let ctl = s.host_controller(&[
        ("S3_OBJECT_LOCK", "true".into()),
        ("S3_STORAGE_CLASS", "STANDARD".into()),
        ("S3_PREFIX", "md5-test".into()),
    ]);
    let target = format!("{}/db", s.project);
    ctl.wait_lists(&target);
    let o = common::host_pgctl(&["backup", "--wait", "--controller", &ctl.url, &target]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    let cfg = common::s3_config(&s);
    let keys = common::keys(&cfg, "md5-test/");
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("md5-test/{target}/")) && k.ends_with("/manifest.json")),
        "{keys:?}"
    );
}
