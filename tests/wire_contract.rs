//! The wire contract's gate, as `.ci/run` runs it: `buf lint` (STANDARD)
//! passes on `proto/`, and `buf breaking` tells an added field (fine) from
//! changes that break a deployed client (a renumbered field, a renamed
//! enum value, a removed RPC). Needs buf in `.ci/tools` (`npm ci --prefix
//! .ci/tools`, which `.ci/run` does); without it the test prints SKIPPED.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn buf() -> Option<PathBuf> {
    let buf = root().join(".ci/tools/node_modules/.bin/buf");
    buf.exists().then_some(buf)
}

fn run(buf: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(buf)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A copy of `proto/` with `edit` applied to the contract's text.
fn edited(edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let proto = root().join("proto");
    std::fs::create_dir_all(dir.path().join("consent/v1")).unwrap();
    std::fs::copy(proto.join("buf.yaml"), dir.path().join("buf.yaml")).unwrap();
    let text = std::fs::read_to_string(proto.join("consent/v1/consent.proto")).unwrap();
    let changed = edit(text.clone());
    assert_ne!(changed, text, "the edit changed nothing");
    std::fs::write(dir.path().join("consent/v1/consent.proto"), changed).unwrap();
    dir
}

#[test]
fn lint_passes_and_breaking_changes_are_caught() {
    let Some(buf) = buf() else {
        println!("SKIPPED: buf is not installed in .ci/tools (npm ci --prefix .ci/tools)");
        return;
    };
    let proto = root().join("proto");
    let lint = run(&buf, &proto, &["lint"]);
    assert!(
        lint.status.success(),
        "buf lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let against = proto.display().to_string();
    let breaking = |dir: &Path| run(&buf, dir, &["breaking", ".", "--against", &against]);

    // A new field is what "add fields freely" means: not breaking.
    let added = edited(|t| {
        t.replacen(
            "message CanSendRequest {\n",
            "message CanSendRequest {\n  string campaign = 99;\n",
            1,
        )
    });
    let out = breaking(added.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Each of these breaks a deployed client, and the gate says so.
    type Edit = fn(String) -> String;
    let breaks: [(&str, Edit); 3] = [
        ("renumbered", |t| {
            t.replacen(
                "  bool include_unsubscribe = 5;",
                "  bool include_unsubscribe = 9;",
                1,
            )
        }),
        ("REASON_GRANTED", |t| {
            t.replacen("REASON_GRANTED = 1;", "REASON_ALLOWED = 1;", 1)
        }),
        ("CanSendBatch", |t| {
            let at = t.find("  rpc CanSendBatch(").unwrap();
            let end = at + t[at..].find('\n').unwrap() + 1;
            format!("{}{}", &t[..at], &t[end..])
        }),
    ];
    for (what, edit) in breaks {
        let dir = edited(edit);
        let out = breaking(dir.path());
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{what}: not caught");
        assert!(
            said.contains(what) || what == "renumbered",
            "{what}: {said}"
        );
    }

    // And an unprefixed enum value fails the lint.
    let unprefixed = edited(|t| t.replacen("REASON_GRANTED = 1;", "GRANTED = 1;", 1));
    let out = run(&buf, unprefixed.path(), &["lint"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("REASON_"));
}
