//! Host tuning (`tuning/`): check.sh finds what a stock kernel lacks, apply.sh changes
//! nothing without `--apply`, fixes the box with it, never lowers a better value and is
//! safe to run twice, and volley.service passes `systemd-analyze verify` where it exists.
//!
//! Every script run gets a fake /proc and /etc in a temp dir (TUNING_PROC_ROOT,
//! TUNING_ETC_ROOT): these tests never read or write this machine's sysctls or /etc.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning")
}

/// A fake root with `proc/sys/...` and `etc/...`, removed on drop (also when a test fails).
struct FakeRoot {
    dir: PathBuf,
}

impl FakeRoot {
    /// `name` keeps the dirs of tests running in parallel apart; the pid keeps runs apart.
    fn new(name: &str) -> FakeRoot {
        let dir = std::env::temp_dir().join(format!("volley-tuning-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("proc/sys")).expect("create the fake /proc/sys");
        FakeRoot { dir }
    }

    fn proc_root(&self) -> PathBuf {
        self.dir.join("proc")
    }

    fn etc_root(&self) -> PathBuf {
        self.dir.join("etc")
    }

    fn sysctl_path(&self, key: &str) -> PathBuf {
        self.proc_root().join("sys").join(key.replace('.', "/"))
    }

    /// Writes a value the way the kernel shows it: fields separated by tabs, one newline.
    fn set(&self, key: &str, value: &str) {
        let path = self.sysctl_path(key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            format!("{}\n", value.split(' ').collect::<Vec<_>>().join("\t")),
        )
        .unwrap();
    }

    /// The value with its fields joined by single spaces, as sysctl.conf writes them.
    fn get(&self, key: &str) -> String {
        let text =
            fs::read_to_string(self.sysctl_path(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Every file under the root with its bytes, sorted: equal snapshots mean nothing changed.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    let bytes = fs::read(&path).unwrap();
                    out.push((path, bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir, &mut out);
        out.sort();
        out
    }

    /// Runs `bash tuning/<script> <args>` against this root. TUNING_* from the caller's
    /// environment are removed first so a developer's shell cannot point a test elsewhere.
    fn run(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new("bash");
        command.arg(tuning_dir().join(script)).args(args);
        for name in [
            "TUNING_PROC_ROOT",
            "TUNING_ETC_ROOT",
            "TUNING_NOFILE",
            "TUNING_CPUS",
        ] {
            command.env_remove(name);
        }
        command
            .env("TUNING_PROC_ROOT", self.proc_root())
            .env("TUNING_ETC_ROOT", self.etc_root());
        for (name, value) in env {
            command.env(name, value);
        }
        Run::from(command.output().expect("run bash"))
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The check.sh table row of `key`, e.g. "net.core.somaxconn  4096  65535  SHORT  at-least".
fn row<'a>(run: &'a Run, key: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|line| line.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no row for {key}\n{run}"))
}

/// `(key, value, optional)` of every setting in tuning/sysctl.conf.
fn recommendations() -> Vec<(String, String, bool)> {
    let text = fs::read_to_string(tuning_dir().join("sysctl.conf")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key = value");
            let key = key.trim();
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            match key.strip_prefix('-') {
                Some(key) => (key.to_string(), value, true),
                None => (key.to_string(), value, false),
            }
        })
        .collect()
}

/// A stock kernel on a small box: most values short, fs.file-max already far better (as
/// systemd sets it), tcp_rmem's minimum already smaller, nf_conntrack not loaded.
fn stock_box(root: &FakeRoot) {
    for (key, value) in [
        ("net.core.somaxconn", "4096"),
        ("net.ipv4.tcp_max_syn_backlog", "1024"),
        ("net.ipv4.ip_local_port_range", "32768 60999"),
        ("fs.file-max", "9223372036854775807"),
        ("fs.nr_open", "1048576"),
        ("net.core.netdev_max_backlog", "1000"),
        ("net.ipv4.tcp_rmem", "2048 131072 6291456"),
        ("net.ipv4.tcp_wmem", "4096 16384 4194304"),
        ("net.ipv4.tcp_mem", "45000 60000 90000"),
        ("net.ipv4.tcp_fin_timeout", "60"),
        ("net.ipv4.tcp_max_orphans", "32768"),
        ("net.ipv4.tcp_max_tw_buckets", "32768"),
        ("net.ipv4.tcp_tw_reuse", "2"),
        ("net.ipv4.tcp_keepalive_time", "7200"),
        ("net.ipv4.tcp_keepalive_intvl", "75"),
        ("net.ipv4.tcp_keepalive_probes", "9"),
        ("kernel.io_uring_disabled", "0"),
    ] {
        root.set(key, value);
    }
}

#[test]
fn check_finds_short_values_and_apply_fixes_them_once() {
    let root = FakeRoot::new("flow");
    stock_box(&root);
    let nofile_ok = [("TUNING_NOFILE", "1048576")];

    // check.sh: exit 1, and the short keys are named in the table and in the summary.
    let check = root.run("check.sh", &[], &nofile_ok);
    assert_eq!(check.code, Some(1), "{check}");
    let summary = check
        .stdout
        .lines()
        .find(|line| line.starts_with("SHORT:"))
        .unwrap_or_else(|| panic!("no SHORT: summary\n{check}"));
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.core.netdev_max_backlog",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_tw_reuse",
    ] {
        assert!(row(&check, key).contains("SHORT"), "{key}\n{check}");
        assert!(
            summary.split_whitespace().any(|k| k == key),
            "{key}\n{check}"
        );
    }
    for key in ["fs.file-max", "fs.nr_open", "net.ipv4.tcp_rmem"] {
        assert!(row(&check, key).contains(" OK "), "{key}\n{check}");
    }
    assert!(
        row(&check, "net.netfilter.nf_conntrack_max").contains("absent"),
        "{check}"
    );

    // apply.sh without --apply: prints the commands, changes nothing, creates no /etc.
    let before = root.snapshot();
    let dry = root.run("apply.sh", &[], &[]);
    assert_eq!(dry.code, Some(0), "{dry}");
    assert!(dry.stdout.contains("DRY RUN"), "{dry}");
    for line in [
        "sysctl -w net.core.somaxconn=65535",
        "sysctl -w net.ipv4.ip_local_port_range='10240 65535'",
        "sysctl -w net.ipv4.tcp_mem='131072 262144 393216'",
        "sysctl -w net.ipv4.tcp_fin_timeout=15",
    ] {
        assert!(dry.stdout.lines().any(|l| l == line), "{line}\n{dry}");
    }
    assert!(!dry.stdout.contains("sysctl -w fs.file-max"), "{dry}");
    assert_eq!(root.snapshot(), before, "a dry run changed files\n{dry}");
    assert!(!root.etc_root().exists(), "a dry run created /etc\n{dry}");

    // apply.sh --apply: every key meets its recommendation; better values are kept.
    let apply = root.run("apply.sh", &["--apply"], &[]);
    assert_eq!(apply.code, Some(0), "{apply}");
    for (key, value, optional) in recommendations() {
        match key.as_str() {
            "fs.file-max" => assert_eq!(root.get(&key), "9223372036854775807", "lowered"),
            "net.ipv4.tcp_rmem" => assert_eq!(root.get(&key), "2048 131072 6291456"),
            "net.netfilter.nf_conntrack_max" => {
                assert!(optional, "conntrack must stay optional: most boxes lack it");
                assert!(
                    !root.sysctl_path(&key).exists(),
                    "an absent module got a file"
                );
            }
            _ => assert_eq!(root.get(&key), value, "{key}\n{apply}"),
        }
    }
    let boot = fs::read_to_string(root.etc_root().join("sysctl.d/60-volley.conf")).unwrap();
    assert!(
        boot.lines().any(|l| l == "net.core.somaxconn = 65535"),
        "{boot}"
    );
    assert!(
        boot.lines()
            .any(|l| l == "fs.file-max = 9223372036854775807"),
        "{boot}"
    );
    assert!(
        boot.lines()
            .any(|l| l == "-net.netfilter.nf_conntrack_max = 262144"),
        "{boot}"
    );
    for (source, installed) in [
        ("limits.conf", "security/limits.d/60-volley.conf"),
        ("volley.service", "systemd/system/volley.service"),
        ("volley.toml", "volley/volley.toml"),
    ] {
        assert_eq!(
            fs::read(tuning_dir().join(source)).unwrap(),
            fs::read(root.etc_root().join(installed)).unwrap(),
            "{installed}"
        );
    }

    // check.sh now passes, and still fails on the nofile limit alone.
    let check = root.run("check.sh", &[], &nofile_ok);
    assert_eq!(check.code, Some(0), "{check}");
    let check = root.run("check.sh", &[], &[("TUNING_NOFILE", "20000")]);
    assert_eq!(check.code, Some(1), "{check}");
    assert!(check.stdout.contains("SHORT: nofile\n"), "{check}");

    // Twice is the same as once: no command, no file touched.
    let after_first = root.snapshot();
    let again = root.run("apply.sh", &["--apply"], &[]);
    assert_eq!(again.code, Some(0), "{again}");
    assert!(!again.stdout.contains("sysctl -w"), "{again}");
    assert!(again.stdout.contains("done (0 change(s))"), "{again}");
    assert_eq!(
        root.snapshot(),
        after_first,
        "the second --apply changed files\n{again}"
    );
}

#[test]
fn cpu_plan_keeps_core_0_for_interrupts_only_past_2_cores() {
    let root = FakeRoot::new("cpus");
    stock_box(&root);
    let eight = root.run("apply.sh", &[], &[("TUNING_CPUS", "8")]);
    assert_eq!(eight.code, Some(0), "{eight}");
    assert!(eight.stdout.contains("--cpus 1-7"), "{eight}");
    assert!(eight.stdout.contains("mask 0xfe"), "{eight}");
    assert!(eight.stdout.contains("IRQ core:    0, mask 0x1"), "{eight}");

    let two = root.run("apply.sh", &[], &[("TUNING_CPUS", "2")]);
    assert_eq!(two.code, Some(0), "{two}");
    assert!(two.stdout.contains("no core to spare"), "{two}");
    assert!(two.stdout.contains("without --cpus"), "{two}");
    assert!(!two.stdout.contains("--cpus 1-"), "{two}");
}

/// The numbers that must agree across files: a hard nofile above fs.nr_open stops the
/// unit from starting, and a stop timeout inside the shutdown grace cuts it short.
#[test]
fn unit_limits_and_sysctls_agree() {
    let unit = fs::read_to_string(tuning_dir().join("volley.service")).unwrap();
    let setting = |name: &str| -> String {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("volley.service has no {name}="))
            .trim()
            .to_string()
    };
    let limit_nofile: u64 = setting("LimitNOFILE").parse().unwrap();
    let limits = fs::read_to_string(tuning_dir().join("limits.conf")).unwrap();
    for kind in ["soft", "hard"] {
        let value: u64 = limits
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 4 && f[0] == "volley" && f[1] == kind && f[2] == "nofile")
            .unwrap_or_else(|| panic!("limits.conf has no volley {kind} nofile"))[3]
            .parse()
            .unwrap();
        assert_eq!(
            value, limit_nofile,
            "limits.conf {kind} nofile vs LimitNOFILE"
        );
    }
    let nr_open: u64 = recommendations()
        .into_iter()
        .find(|(key, _, _)| key == "fs.nr_open")
        .expect("sysctl.conf sets fs.nr_open")
        .1
        .parse()
        .unwrap();
    assert!(
        limit_nofile <= nr_open,
        "LimitNOFILE {limit_nofile} > fs.nr_open {nr_open}"
    );

    // volley's --shutdown-grace-ms default is 5000 (README); systemd must wait longer.
    let stop_s: u64 = setting("TimeoutStopSec").parse().unwrap();
    assert!(
        stop_s > 5,
        "TimeoutStopSec={stop_s} must exceed the 5 s shutdown grace"
    );
    assert_eq!(setting("KillSignal"), "SIGTERM");
    assert!(
        !unit.lines().any(|l| l.starts_with("SystemCallFilter=")),
        "a syscall filter can block io_uring_setup, and glommio cannot start without it"
    );
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let found = Command::new("systemd-analyze").arg("--version").output();
    if !found.map(|o| o.status.success()).unwrap_or(false) {
        println!("note: systemd-analyze not found; skipping `verify volley.service`");
        return;
    }
    // verify insists that ExecStart's binary exists; /usr/local/bin/volley is not
    // installed on a build box, so verify a copy whose ExecStart is a stand-in script.
    let root = FakeRoot::new("verify");
    let stand_in = root.dir.join("volley");
    fs::write(&stand_in, "#!/bin/sh\nexit 0\n").unwrap();
    let chmod = Command::new("chmod")
        .arg("755")
        .arg(&stand_in)
        .status()
        .unwrap();
    assert!(chmod.success());
    let unit = fs::read_to_string(tuning_dir().join("volley.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/volley serve "),
        "{unit}"
    );
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/volley ",
        &format!("ExecStart={} ", stand_in.display()),
    );
    let unit_path = root.dir.join("volley.service");
    fs::write(&unit_path, unit).unwrap();

    let verify = Run::from(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .output()
            .unwrap(),
    );
    assert_eq!(verify.code, Some(0), "{verify}");
    // verify reports unknown or misspelt settings on stderr but may still exit 0.
    assert!(!verify.stderr.contains("volley.service"), "{verify}");
}
