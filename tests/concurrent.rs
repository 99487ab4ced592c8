//! Two runs injecting on the same host CPUs disturb each other: the later
//! one says so (issue 17's review: "nothing detects or mentions the other
//! run"). Real VMs, two processes.

mod common;

use common::{
    finish, ipivirt, kvm_or_skip, pause_run, read_json, send_signal, spawn_ipivirt, text,
    wait_for_thread,
};

#[test]
fn test_second_run_on_the_same_host_cpus_is_warned() {
    if !kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("b.json");
    let first = spawn_ipivirt(&pause_run("60s", &["--host-cpus", "0-1"]));
    let pid = first.id();
    wait_for_thread(pid, "inj-");
    let second = ipivirt(&pause_run(
        "100ms",
        &["--host-cpus", "1", "--json", json.to_str().unwrap()],
    ));
    send_signal(pid, "INT");
    let (status, _, _) = finish(first);
    assert_eq!(status.code(), Some(130));
    let (stdout, stderr) = text(&second);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    let says = "another ipivirt process is injecting on host CPUs [1]";
    assert!(stderr.contains(says), "{stderr}");
    assert!(stdout.contains(says), "{stdout}");
    let r = read_json(&json);
    assert!(
        r["host"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(says)),
        "{r}"
    );
    // Alone again: no warning.
    let alone = ipivirt(&pause_run("100ms", &["--host-cpus", "1"]));
    let (_, stderr) = text(&alone);
    assert!(!stderr.contains("another ipivirt"), "{stderr}");
}
