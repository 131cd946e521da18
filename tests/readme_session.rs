//! The README's grpcurl session, run as written against a real server
//! (its address put in): reflection, health and every call by the wire's
//! names. With `grpcurl` on the PATH it runs the commands themselves; where
//! grpcurl is missing (it is in no package registry these machines reach)
//! but buf is installed (`.ci/run` puts it in `.ci/tools`), each command runs
//! as the same call through `buf curl`, also over reflection; with neither,
//! the test prints SKIPPED.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const README_ADDR: &str = "127.0.0.1:50051";

/// The commands of the README's `## A session with grpcurl` block, as argv
/// lists (comments dropped, continued lines joined, quotes taken off).
fn session() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let at = readme
        .find("## A session with grpcurl")
        .expect("the README has the session");
    let block = &readme[at..];
    let start = block.find("```sh\n").unwrap() + 6;
    let block = &block[start..start + block[start..].find("```").unwrap()];
    let script: String = block
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    words(&script)
}

/// Splits a shell script of simple commands into argv lists: words are
/// split on blanks, a newline ends a command unless escaped, and '...' or
/// "..." quote (across lines too).
fn words(script: &str) -> Vec<Vec<String>> {
    let (mut commands, mut argv, mut word) = (Vec::new(), Vec::new(), None::<String>);
    let mut chars = script.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
            }
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    w.push(q);
                }
            }
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    argv.push(w);
                }
                if c == '\n' && !argv.is_empty() {
                    commands.push(std::mem::take(&mut argv));
                }
            }
            _ => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word.take() {
        argv.push(w);
    }
    if !argv.is_empty() {
        commands.push(argv);
    }
    commands
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// One grpcurl command as `buf curl` runs the same call.
fn as_buf_curl(buf: &Path, grpcurl: &[String], addr: &str) -> Command {
    let mut c = Command::new(buf);
    c.args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"]);
    let mut args = grpcurl[1..].iter();
    let mut positional = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-plaintext" => {}
            "-d" => {
                c.arg("-d").arg(args.next().expect("-d takes the body"));
            }
            other => positional.push(other.to_owned()),
        }
    }
    match positional.as_slice() {
        [_, list] if list == "list" => c.arg("--list-services").arg(format!("http://{addr}")),
        [_, method] => c.arg(format!("http://{addr}/{method}")),
        other => panic!("a grpcurl command this test cannot run: {other:?}"),
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_session_runs_as_written() {
    let buf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/node_modules/.bin/buf");
    let grpcurl = on_path("grpcurl");
    if !grpcurl && !buf.exists() {
        println!(
            "SKIPPED: neither grpcurl nor buf (.ci/tools: npm ci --prefix .ci/tools) is installed: \
             the README's session was not run"
        );
        return;
    }
    let server = TestServer::start().await;
    let addr = server.grpc_addr.to_string();
    let commands = session();
    assert!(commands.len() >= 10, "{commands:?}");
    let mut outputs = Vec::new();
    for argv in &commands {
        assert_eq!(argv[0], "grpcurl", "{argv:?}");
        let argv: Vec<String> = argv.iter().map(|a| a.replace(README_ADDR, &addr)).collect();
        let mut command = if grpcurl {
            let mut c = Command::new("grpcurl");
            c.args(&argv[1..]);
            c
        } else {
            as_buf_curl(&buf, &argv, &addr)
        };
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{argv:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(stdout);
    }
    // What the session's comments say it shows.
    let answers = |method: &str| -> Vec<&String> {
        commands
            .iter()
            .zip(&outputs)
            .filter(|(argv, _)| argv.iter().any(|a| a.ends_with(method)))
            .map(|(_, out)| out)
            .collect()
    };
    let checks = answers("EligibilityService/CanSend");
    assert_eq!(checks.len(), 3, "{outputs:?}");
    assert!(checks[0].contains("REASON_GRANTED"), "{}", checks[0]);
    assert!(checks[1].contains("REASON_WITHDRAWN"), "{}", checks[1]);
    assert!(checks[1].contains("marketing.acme.email"), "{}", checks[1]);
    assert!(checks[2].contains("REASON_GRANTED"), "{}", checks[2]);
    let history = answers("ConsentsService/GetHistory");
    assert!(
        history[0].contains("SOURCE_UNSUBSCRIBE_LINK"),
        "{history:?}"
    );
    assert!(history[0].contains("signup-2026:8812"), "{history:?}");
    let list = outputs
        .iter()
        .find(|o| o.contains("grpc.health.v1.Health"))
        .expect("the service list");
    for service in [
        "consent.v1.EligibilityService",
        "consent.v1.ConsentsService",
        "consent.v1.CatalogService",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(list.contains(service), "{service} listed: {list}");
    }
    assert!(answers("Health/Check")[0].contains("SERVING"));
    server.stop().await;
}

#[test]
fn the_session_splits_into_commands() {
    let c = words("a -d '{\n \"x\": 1\n}' b \\\n  c\n# not\nd \"e f\"\n");
    assert_eq!(
        c,
        [
            vec!["a", "-d", "{\n \"x\": 1\n}", "b", "c"],
            vec!["#", "not"],
            vec!["d", "e f"],
        ]
    );
}
