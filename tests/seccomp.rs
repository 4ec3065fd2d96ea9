//! deploy/kubernetes/seccomp/io-uring.json, the Localhost seccomp profile
//! the Kubernetes bundle runs sluice under (the runtime's default list plus
//! io_uring_setup, io_uring_enter and io_uring_register):
//! - it allows every system call sluice makes while starting, serving
//!   1,000 requests and draining, as `strace -f -c` counts them;
//! - sluice serves under it, compiled here into the BPF filter a runtime
//!   would install from it, on io_uring where the kernel has it;
//! - under the same profile less the three io_uring calls (what containerd
//!   2 and Docker's default profiles are) it serves on epoll, and its
//!   start-up line and `sluice_io_driver` say so.
//!
//! x86_64 only: the system call numbers come from this machine's
//! `asm/unistd_64.h` (linux-libc-dev, scripts/install-test-tools).
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

mod common;
#[path = "support/process.rs"]
mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use process::Process;
use serde_json::Value;

const IO_URING_CALLS: [&str; 3] = ["io_uring_setup", "io_uring_enter", "io_uring_register"];
/// Requests sent while traced or filtered.
const REQUESTS: usize = 1_000;

fn profile_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/seccomp/io-uring.json")
}

/// What the runtime does with a matching call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Allow,
    Errno(u32),
}

#[derive(Clone, Copy, Debug)]
enum Operator {
    Equal,
    NotEqual,
    /// `(argument & value) == value_two`
    MaskedEqual,
}

#[derive(Clone, Debug)]
struct Condition {
    index: u32,
    operator: Operator,
    value: u64,
    value_two: u64,
}

#[derive(Clone, Debug)]
struct Rule {
    names: Vec<String>,
    action: Action,
    /// All must hold (libseccomp's meaning of several `args`).
    conditions: Vec<Condition>,
}

/// The profile in the OCI runtime specification's form (`LinuxSeccomp`),
/// which containerd and CRI-O read for a Localhost profile. Only the
/// fields and values the bundle's profile uses are understood; anything
/// else fails the test rather than being applied wrongly.
#[derive(Clone, Debug)]
struct Profile {
    default_errno: u32,
    rules: Vec<Rule>,
}

impl Profile {
    fn load() -> Profile {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(profile_path()).unwrap()).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(
                [
                    "defaultAction",
                    "defaultErrnoRet",
                    "architectures",
                    "syscalls"
                ]
                .contains(&key.as_str()),
                "this test does not know how a runtime applies {key:?}"
            );
        }
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(json["architectures"]
            .as_array()
            .unwrap()
            .contains(&Value::from("SCMP_ARCH_X86_64")));
        let rules = json["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| {
                for key in entry.as_object().unwrap().keys() {
                    assert!(
                        ["names", "action", "args", "errnoRet"].contains(&key.as_str()),
                        "this test does not know how a runtime applies {key:?}"
                    );
                }
                let action = match entry["action"].as_str().unwrap() {
                    "SCMP_ACT_ALLOW" => Action::Allow,
                    "SCMP_ACT_ERRNO" => {
                        Action::Errno(entry["errnoRet"].as_u64().unwrap_or(1) as u32)
                    }
                    other => panic!("action {other}"),
                };
                let conditions = entry["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|argument| Condition {
                        index: argument["index"].as_u64().unwrap() as u32,
                        operator: match argument["op"].as_str().unwrap() {
                            "SCMP_CMP_EQ" => Operator::Equal,
                            "SCMP_CMP_NE" => Operator::NotEqual,
                            "SCMP_CMP_MASKED_EQ" => Operator::MaskedEqual,
                            other => panic!("operator {other}"),
                        },
                        value: argument["value"].as_u64().unwrap(),
                        value_two: argument["valueTwo"].as_u64().unwrap_or(0),
                    })
                    .collect();
                Rule {
                    names: entry["names"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|name| name.as_str().unwrap().to_string())
                        .collect(),
                    action,
                    conditions,
                }
            })
            .collect();
        Profile {
            default_errno: json["defaultErrnoRet"].as_u64().unwrap_or(1) as u32,
            rules,
        }
    }

    /// Calls some rule allows (outright or with conditions on arguments).
    fn allowed(&self) -> BTreeSet<&str> {
        self.rules
            .iter()
            .filter(|rule| rule.action == Action::Allow)
            .flat_map(|rule| rule.names.iter().map(String::as_str))
            .collect()
    }

    /// Calls refused on purpose with an errno of their own (clone3 gets
    /// ENOSYS, so the C library falls back to clone).
    fn refused_on_purpose(&self) -> BTreeSet<&str> {
        self.rules
            .iter()
            .filter(|rule| matches!(rule.action, Action::Errno(_)))
            .flat_map(|rule| rule.names.iter().map(String::as_str))
            .collect()
    }

    /// The same profile without `calls` (they get the default action).
    fn without(&self, calls: &[&str]) -> Profile {
        let mut profile = self.clone();
        for rule in &mut profile.rules {
            rule.names.retain(|name| !calls.contains(&name.as_str()));
        }
        profile
    }

    /// The classic BPF program a runtime installs for this profile
    /// (x86_64; names this architecture lacks are skipped, as runc does).
    fn filter(&self) -> Vec<libc::sock_filter> {
        let numbers = syscall_numbers();
        let mut program = Program::default();
        // Another architecture's calls (the x32 or i386 entry points) are
        // killed; the profile is for x86_64's.
        let native = program.label();
        program.load(ARCH_OFFSET);
        program.jump_if_equal(AUDIT_ARCH_X86_64, Target::Label(native), Target::Next);
        program.ret(SECCOMP_RET_KILL_PROCESS);
        program.bind(native);
        program.load(NUMBER_OFFSET);
        for rule in &self.rules {
            let action = match rule.action {
                Action::Allow => SECCOMP_RET_ALLOW,
                Action::Errno(errno) => SECCOMP_RET_ERRNO | errno,
            };
            for name in &rule.names {
                let Some(&number) = numbers.get(name) else {
                    continue;
                };
                let skip = program.label();
                program.jump_if_equal(number, Target::Next, Target::Label(skip));
                if rule.conditions.is_empty() {
                    program.ret(action);
                } else {
                    let fail = program.label();
                    for condition in &rule.conditions {
                        program.condition(condition, fail);
                    }
                    program.ret(action);
                    program.bind(fail);
                    program.load(NUMBER_OFFSET);
                }
                program.bind(skip);
            }
        }
        program.ret(SECCOMP_RET_ERRNO | self.default_errno);
        program.finish()
    }
}

const NUMBER_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// `offsetof(struct seccomp_data, args)`: eight bytes per argument, low
/// half first (little-endian).
const ARGUMENTS_OFFSET: u32 = 16;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// BPF_LD | BPF_W | BPF_ABS
const LOAD: u16 = 0x20;
/// BPF_ALU | BPF_AND | BPF_K
const AND: u16 = 0x54;
/// BPF_JMP | BPF_JEQ | BPF_K
const JUMP_IF_EQUAL: u16 = 0x15;
/// BPF_RET | BPF_K
const RETURN: u16 = 0x06;

#[derive(Clone, Copy)]
enum Target {
    Next,
    Label(usize),
}

/// A BPF program with labels, resolved to relative jumps at the end.
#[derive(Default)]
struct Program {
    code: Vec<(u16, Target, Target, u32)>,
    labels: Vec<Option<usize>>,
}

impl Program {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    fn load(&mut self, offset: u32) {
        self.code.push((LOAD, Target::Next, Target::Next, offset));
    }

    fn and(&mut self, mask: u32) {
        self.code.push((AND, Target::Next, Target::Next, mask));
    }

    fn jump_if_equal(&mut self, value: u32, yes: Target, no: Target) {
        self.code.push((JUMP_IF_EQUAL, yes, no, value));
    }

    fn ret(&mut self, value: u32) {
        self.code.push((RETURN, Target::Next, Target::Next, value));
    }

    /// Falls through when `condition` holds for the 64-bit argument,
    /// jumps to `fail` otherwise.
    fn condition(&mut self, condition: &Condition, fail: usize) {
        let low = ARGUMENTS_OFFSET + 8 * condition.index;
        let high = low + 4;
        let halves = |value: u64| ((value >> 32) as u32, value as u32);
        match condition.operator {
            Operator::Equal => {
                let (value_high, value_low) = halves(condition.value);
                self.load(high);
                self.jump_if_equal(value_high, Target::Next, Target::Label(fail));
                self.load(low);
                self.jump_if_equal(value_low, Target::Next, Target::Label(fail));
            }
            Operator::MaskedEqual => {
                let (mask_high, mask_low) = halves(condition.value);
                let (value_high, value_low) = halves(condition.value_two);
                self.load(high);
                self.and(mask_high);
                self.jump_if_equal(value_high, Target::Next, Target::Label(fail));
                self.load(low);
                self.and(mask_low);
                self.jump_if_equal(value_low, Target::Next, Target::Label(fail));
            }
            Operator::NotEqual => {
                let holds = self.label();
                let (value_high, value_low) = halves(condition.value);
                self.load(high);
                self.jump_if_equal(value_high, Target::Next, Target::Label(holds));
                self.load(low);
                self.jump_if_equal(value_low, Target::Label(fail), Target::Next);
                self.bind(holds);
            }
        }
    }

    fn finish(self) -> Vec<libc::sock_filter> {
        assert!(
            self.code.len() <= 4096,
            "BPF programs hold 4096 instructions"
        );
        let resolve = |at: usize, target: Target| -> u8 {
            match target {
                Target::Next => 0,
                Target::Label(label) => {
                    let to = self.labels[label].expect("a bound label");
                    u8::try_from(to - (at + 1)).expect("a jump within 255 instructions")
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(at, &(code, yes, no, k))| libc::sock_filter {
                code,
                jt: resolve(at, yes),
                jf: resolve(at, no),
                k,
            })
            .collect()
    }
}

/// x86_64 system call numbers by name, from the kernel's UAPI header.
fn syscall_numbers() -> BTreeMap<String, u32> {
    let header = [
        "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
        "/usr/include/asm/unistd_64.h",
    ]
    .into_iter()
    .find(|path| Path::new(path).exists())
    .expect("asm/unistd_64.h: run scripts/install-test-tools (linux-libc-dev)");
    let numbers: BTreeMap<String, u32> = std::fs::read_to_string(header)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("#define __NR_")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect();
    assert!(numbers.len() > 300 && numbers["io_uring_setup"] == 425);
    numbers
}

/// Runs `command` under `filter` (installed between fork and exec, with
/// no_new_privs, as a runtime does before starting the container's process).
fn under_filter(command: &mut Command, filter: Vec<libc::sock_filter>) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; the program is built before the
    // fork and only read here.
    unsafe {
        command.pre_exec(move || {
            let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &program as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// sluice as the bundle runs it (its sluice.toml), with this machine's
/// broker, keys file and schema directory, on one core.
fn bundle_sluice(program: &Path, broker: &Broker, dir: &TempDir) -> Command {
    let schemas = dir.0.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::write(
        schemas.join("page_view.json"),
        r#"{"required":["user_id"]}"#,
    )
    .unwrap();
    let mut command = Command::new(program);
    command
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base/sluice.toml"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--brokers",
            &broker.address,
        ])
        .arg("--keys-file")
        .arg(dir.file("keys.toml", &keys_file_text()))
        .env("SLUICE_SCHEMAS_DIR", &schemas);
    command
}

/// `REQUESTS` events over four keep-alive connections, each answered 202;
/// then /metrics and /readyz.
fn serve_requests(sluice: &Process) {
    wait_until("ready", Duration::from_secs(30), || {
        sluice.get("/readyz").status == 200
    });
    let body = event("seccomp_user", "");
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: t\r\nX-CS-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..4 {
        let mut stream = TcpStream::connect(sluice.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        for _ in 0..REQUESTS / 4 {
            stream.write_all(request.as_bytes()).unwrap();
            let response = read_response(&mut stream).expect("a response");
            assert_eq!(response.status, 202, "{}", response.text());
        }
    }
    assert_eq!(sluice.get("/metrics").status, 200);
    assert_eq!(sluice.get("/readyz").status, 200);
}

/// The system calls `strace -f -c` counted, from its summary table.
fn traced_calls(summary: &str) -> BTreeSet<String> {
    summary
        .lines()
        .skip_while(|line| !line.starts_with("------"))
        .skip(1)
        .take_while(|line| !line.starts_with("------"))
        .filter_map(|line| line.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

/// Whether this kernel lets a process create an io_uring.
fn io_uring_available() -> bool {
    // SAFETY: io_uring_setup with one entry and zeroed parameters (120
    // bytes, the size of struct io_uring_params); the descriptor it may
    // return is closed at once.
    unsafe {
        let mut params = [0u8; 120];
        let fd = libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr());
        if fd >= 0 {
            libc::close(fd as i32);
        }
        fd >= 0
    }
}

#[test]
fn the_profile_allows_every_call_sluice_makes() {
    let profile = Profile::load();
    let allowed = profile.allowed();
    for call in IO_URING_CALLS {
        assert!(allowed.contains(call), "the profile does not allow {call}");
    }
    let broker = Broker::start();
    let dir = TempDir::new("strace");
    let trace = dir.0.join("strace.txt");
    let mut strace = Command::new("strace");
    strace.args(["-f", "-c", "-o"]).arg(&trace).arg("--");
    let sluice_command = bundle_sluice(&sluice_binary(), &broker, &dir);
    strace
        .arg(sluice_command.get_program())
        .args(sluice_command.get_args())
        .envs(sluice_command.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let mut sluice = Process::start(&mut strace);
    serve_requests(&sluice);
    // Drain and exit: SIGTERM to sluice itself, strace's child (strace
    // would detach on a signal of its own).
    let strace_pid = sluice.child.id();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let sluice_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(sluice_pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sluice.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "sluice did not drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    let summary = std::fs::read_to_string(&trace).unwrap();
    let calls = traced_calls(&summary);
    assert!(calls.len() >= 20 && calls.contains("execve"), "{summary}");
    if io_uring_available() {
        assert!(
            calls.contains("io_uring_setup"),
            "the event loop ran on io_uring:\n{summary}"
        );
    }
    let refused = profile.refused_on_purpose();
    let outside: Vec<&String> = calls
        .iter()
        .filter(|call| !allowed.contains(call.as_str()) && !refused.contains(call.as_str()))
        .collect();
    assert!(
        outside.is_empty(),
        "sluice calls what deploy/kubernetes/seccomp/io-uring.json refuses: {outside:?}\n{summary}"
    );
    // Calls the profile refuses on purpose have a fallback (clone3: clone).
    for call in calls.iter().filter(|call| refused.contains(call.as_str())) {
        assert_eq!(
            call, "clone3",
            "{call} is refused on purpose, with no fallback known here"
        );
        assert!(allowed.contains("clone"));
    }
}

/// The driver `sluice_io_driver` says is in use.
fn io_driver(sluice: &Process) -> String {
    let scrape = sluice.get("/metrics").text();
    let drivers: Vec<&str> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("sluice_io_driver{driver=\""))
        .filter_map(|rest| rest.strip_suffix("\"} 1"))
        .collect();
    assert_eq!(drivers.len(), 1, "one driver in use:\n{scrape}");
    drivers[0].to_string()
}

#[test]
fn sluice_serves_under_the_profile_and_on_epoll_without_io_uring() {
    let profile = Profile::load();
    let broker = Broker::start();
    // The bundle's profile: io_uring where the kernel has it.
    let dir = TempDir::new("seccomp-profile");
    let mut command = bundle_sluice(&sluice_binary(), &broker, &dir);
    let sluice = Process::start(under_filter(&mut command, profile.filter()));
    serve_requests(&sluice);
    let expected = if io_uring_available() {
        "io_uring"
    } else {
        "epoll"
    };
    assert_eq!(io_driver(&sluice), expected);
    drop(sluice);
    // The runtime's default profile (the same less io_uring): epoll, and
    // the start-up line says why.
    let dir = TempDir::new("seccomp-default");
    let mut command = bundle_sluice(&sluice_binary(), &broker, &dir);
    let sluice = Process::start(under_filter(
        &mut command,
        profile.without(&IO_URING_CALLS).filter(),
    ));
    serve_requests(&sluice);
    assert_eq!(io_driver(&sluice), "epoll");
    let logs = sluice.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("io_driver") || line.contains("I/O driver"))
        .unwrap_or_else(|| panic!("no start-up line about the I/O driver:\n{logs}"));
    assert!(
        line.contains("epoll") && line.contains("io_uring"),
        "{line}"
    );
}
