//! One-time tokens are accepted once, across threads, instances and processes.

use std::process::Command;

use agentspace_identity::{Expected, Identity, NothingRevoked, Rejection, TaskTokenRequest};

use super::support::{Fixture, GATEWAY, name};

#[test]
fn a_one_time_token_is_accepted_once() {
    let f = Fixture::new();
    let token = f
        .identity
        .mint_task_token(
            &f.principal("a", "1"),
            &TaskTokenRequest::new(GATEWAY).one_time(),
        )
        .unwrap();
    assert!(token.claims().one_time);
    let expected = Expected::task(&f.tenant, GATEWAY);
    assert!(
        f.identity
            .verify(token.as_str(), &expected, &NothingRevoked)
            .is_ok()
    );
    assert_eq!(
        f.identity
            .verify(token.as_str(), &expected, &NothingRevoked),
        Err(Rejection::Replayed {
            jti: token.claims().jti.clone()
        })
    );
    // Remembered on disk: another (or a restarted) process refuses it too.
    let restarted = f.another_process();
    assert!(matches!(
        restarted.verify(token.as_str(), &expected, &NothingRevoked),
        Err(Rejection::Replayed { .. })
    ));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(f.dir.path().join("identity/replay.sqlite"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_reusable_task_token_verifies_many_times() {
    let f = Fixture::new();
    let token = f.mint(&f.principal("a", "1"));
    for _ in 0..3 {
        assert!(f.verify(token.as_str()).is_ok());
    }
    assert!(
        !f.dir.path().join("identity/replay.sqlite").exists(),
        "no replay store needed"
    );
}

#[test]
fn a_refused_token_does_not_use_up_its_id() {
    let f = Fixture::new();
    let token = f
        .identity
        .mint_task_token(
            &f.principal("a", "1"),
            &TaskTokenRequest::new(GATEWAY).one_time(),
        )
        .unwrap();
    assert!(matches!(
        f.identity.verify(
            token.as_str(),
            &Expected::task(&f.tenant, "elsewhere"),
            &NothingRevoked
        ),
        Err(Rejection::WrongAudience { .. })
    ));
    let revoked = |_: &agentspace_core::Principal| Ok(Some("revoked".to_owned()));
    assert!(matches!(
        f.identity.verify(
            token.as_str(),
            &Expected::task(&f.tenant, GATEWAY),
            &revoked
        ),
        Err(Rejection::Revoked { .. })
    ));
    assert!(f.verify(token.as_str()).is_ok());
}

#[test]
fn racing_threads_with_their_own_connections_accept_a_token_once() {
    let f = Fixture::new();
    let token = f
        .identity
        .mint_task_token(
            &f.principal("a", "1"),
            &TaskTokenRequest::new(GATEWAY).one_time(),
        )
        .unwrap();
    let accepted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let identity = f.another_process();
                let tenant = f.tenant.clone();
                let token = token.as_str().to_owned();
                s.spawn(move || {
                    identity
                        .verify(&token, &Expected::task(&tenant, GATEWAY), &NothingRevoked)
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(accepted, 1);
}

const CHILD_DIR: &str = "AGENTSPACE_IDENTITY_TEST_REPLAY_DIR";
const CHILD_TOKEN: &str = "AGENTSPACE_IDENTITY_TEST_REPLAY_TOKEN";

/// Run by `racing_processes_accept_a_token_once` in child processes; does nothing alone.
#[test]
#[ignore = "helper: run as a child process by racing_processes_accept_a_token_once"]
fn replay_child_process() {
    let (Some(dir), Some(token)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_TOKEN).ok())
    else {
        return;
    };
    let identity = Identity::open(std::path::Path::new(&dir));
    match identity.verify(
        &token,
        &Expected::task(&name("acme"), GATEWAY),
        &NothingRevoked,
    ) {
        Ok(_) => println!("RESULT=accepted"),
        Err(Rejection::Replayed { .. }) => println!("RESULT=replayed"),
        Err(other) => println!("RESULT=error {other}"),
    }
}

#[test]
fn racing_processes_accept_a_token_once() {
    // System clock here: the children run on the real clock.
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::open(dir.path());
    let principal = Fixture::new().principal("a", "1");
    let token = identity
        .mint_task_token(&principal, &TaskTokenRequest::new(GATEWAY).one_time())
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "suite::replay::replay_child_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_TOKEN, token.as_str())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap();
            out.lines()
                .find_map(|l| l.split_once("RESULT=").map(|(_, r)| r))
                .unwrap_or("missing")
                .to_owned()
        })
        .collect();
    assert_eq!(
        results.iter().filter(|r| *r == "accepted").count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| *r == "replayed").count(),
        5,
        "{results:?}"
    );
}
