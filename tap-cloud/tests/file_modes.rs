//! What the command line writes that holds a secret is its owner's alone, whatever the
//! umask and whatever was at the path before: the access key of `sensors add --key-file`,
//! the database (password hashes, every event).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output},
};

/// `tap-cloud ARGS` under the common umask 022, which leaves new files readable by all.
fn cloud(args: &[&str]) -> Output {
    Command::new("sh")
        .args(["-c", "umask 022 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_tap-cloud")])
        .args(args)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

use tap_testkit::TempDir;

#[test]
fn an_access_key_file_is_private_in_place_of_whatever_was_there() {
    let tmp = TempDir::new("key-file");
    let db = tmp.0.join("cloud.db");
    let db = db.to_str().unwrap();

    let key = tmp.0.join("s1.key");
    std::fs::write(&key, "an older key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cloud(&["sensors", "add", "s1", "--db", db, "--key-file", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&key), 0o600);
    assert!(std::fs::read_to_string(&key).unwrap().starts_with("dctap_"));

    // A symlink planted at the path is replaced, not written through.
    std::fs::create_dir(tmp.0.join("x")).unwrap();
    let target = tmp.0.join("x/target");
    std::fs::write(&target, "untouched").unwrap();
    let link = tmp.0.join("s2.key");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = cloud(&["sensors", "add", "s2", "--db", db, "--key-file", link.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    assert_eq!(mode(&link), 0o600);
    assert!(std::fs::read_to_string(&link).unwrap().starts_with("dctap_"));
}

#[test]
fn the_database_is_created_private_and_an_open_one_is_restricted() {
    let tmp = TempDir::new("db-file");
    let db = tmp.0.join("var/dctap/cloud.db");
    let out = cloud(&["sensors", "add", "s1", "--db", db.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((mode(&db), mode(&tmp.0.join("var")), mode(&tmp.0.join("var/dctap"))), (0o600, 0o700, 0o700));

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cloud(&["sensors", "list", "--db", db.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&db), 0o600);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("{} was open to others (mode 644); now 600", db.display())), "{log}");
}
