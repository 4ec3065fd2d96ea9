//! Where threads run: CPU lists (`server.cpus`, `kafka.producer_cpus`), the
//! CPUs this process may use (its affinity mask, as set by `taskset` or a
//! cpuset), the CPU quota of its cgroup, and pinning a thread.
//!
//! Used at start-up and when a thread starts; never on the data path.

use anyhow::{bail, Context as _};

/// The highest CPU number a list may name (the kernel's `CPU_SETSIZE`).
pub const CPU_NUMBER_MAX: usize = 1023;

/// Parses a CPU list as the kernel writes them (`cpuset(7)`): numbers and
/// inclusive ranges separated by commas, e.g. `0-3,8,10-11`. The result is
/// in the order given, without duplicates. An empty list is an error.
pub fn parse_cpu_list(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for item in text.split(',').map(str::trim) {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (parse_cpu(first)?, parse_cpu(last)?),
            None => {
                let cpu = parse_cpu(item)?;
                (cpu, cpu)
            }
        };
        if first > last {
            bail!("CPU range {item:?} runs backwards");
        }
        for cpu in first..=last {
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
    }
    Ok(cpus)
}

fn parse_cpu(text: &str) -> anyhow::Result<usize> {
    let cpu: usize = text
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a CPU number"))?;
    if cpu > CPU_NUMBER_MAX {
        bail!("CPU {cpu} is above {CPU_NUMBER_MAX}");
    }
    Ok(cpu)
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..=CPU_NUMBER_MAX)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpus` (one or more). Threads it starts
/// afterwards inherit the mask.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET only writes bits below
    // CPU_SETSIZE (every number is at most CPU_NUMBER_MAX).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `work` with the calling thread pinned to `cpus`, then restores its
/// previous mask: threads `work` starts (librdkafka's) keep `cpus`.
pub fn with_affinity<T>(cpus: &[usize], work: impl FnOnce() -> T) -> T {
    let previous = allowed_cpus();
    if let Err(error) = pin_current_thread(cpus) {
        tracing::warn!(%error, ?cpus, "could not pin a thread");
    }
    let result = work();
    if !previous.is_empty() {
        let _ = pin_current_thread(&previous);
    }
    result
}

/// CPUs' worth of time the process's cgroup may use, rounded up: a
/// container limited to 2 CPUs on a 64-CPU host gives 2. `None` when
/// unlimited or unknown. Reads cgroup v2's `cpu.max`, or v1's
/// `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
pub fn cgroup_cpu_limit() -> Option<usize> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cpu_limit_from(&membership, |path| std::fs::read_to_string(path).ok())
}

/// [`cgroup_cpu_limit`] over a `/proc/self/cgroup` text and a file reader.
pub fn cpu_limit_from(membership: &str, read: impl Fn(&str) -> Option<String>) -> Option<usize> {
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            // cgroup v2: "max 100000" or "200000 100000".
            if let Some(text) = read(&format!("/sys/fs/cgroup{path}/cpu.max")) {
                let mut values = text.split_whitespace();
                let (quota, period) = (values.next()?, values.next()?);
                return cpus_for(quota.parse().ok()?, period.parse().ok()?);
            }
        } else if controllers.split(',').any(|controller| controller == "cpu") {
            let directory = ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"]
                .into_iter()
                .find(|root| read(&format!("{root}{path}/cpu.cfs_period_us")).is_some())?;
            let value = |name: &str| -> Option<i64> {
                read(&format!("{directory}{path}/{name}"))?
                    .trim()
                    .parse()
                    .ok()
            };
            return cpus_for(value("cpu.cfs_quota_us")?, value("cpu.cfs_period_us")?);
        }
    }
    None
}

fn cpus_for(quota: i64, period: i64) -> Option<usize> {
    if quota <= 0 || period <= 0 {
        return None;
    }
    Some(((quota + period - 1) / period) as usize)
}

/// The CPUs event loops are spread over: `server.cpus` if set, else the
/// allowed CPUs; and how many loops run by default: one per such CPU, but
/// no more than the cgroup's quota allows.
pub fn event_loop_cpus(configured: Option<&[usize]>) -> (Vec<usize>, usize) {
    let cpus = configured.map_or_else(allowed_cpus, <[usize]>::to_vec);
    let quota = cgroup_cpu_limit().unwrap_or(usize::MAX);
    let default_cores = cpus.len().min(quota).max(1);
    (cpus, default_cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8").unwrap(), vec![0, 1, 2, 3, 8]);
        assert_eq!(parse_cpu_list(" 5 , 2-3 ,3").unwrap(), vec![5, 2, 3]);
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        for bad in ["", "a", "3-1", "1-", "-1", "0,,1", "1024", "0-99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn reads_cgroup_v2_quota() {
        let files = |path: &str| match path {
            "/sys/fs/cgroup/kubepods/pod1/cpu.max" => Some("150000 100000\n".to_string()),
            "/sys/fs/cgroup/unlimited/cpu.max" => Some("max 100000\n".to_string()),
            _ => None,
        };
        assert_eq!(cpu_limit_from("0::/kubepods/pod1\n", files), Some(2));
        assert_eq!(cpu_limit_from("0::/unlimited\n", files), None);
        assert_eq!(cpu_limit_from("0::/elsewhere\n", files), None);
    }

    #[test]
    fn reads_cgroup_v1_quota() {
        let files = |path: &str| match path {
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us" => Some("200000\n".into()),
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us" => Some("100000\n".into()),
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us" => Some("-1\n".into()),
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us" => Some("100000\n".into()),
            _ => None,
        };
        let membership = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n";
        assert_eq!(cpu_limit_from(membership, files), Some(2));
        assert_eq!(cpu_limit_from("2:cpu,cpuacct:/\n", files), None);
    }

    #[test]
    fn pins_the_calling_thread() {
        let allowed = allowed_cpus();
        let target = *allowed.last().expect("some CPU is allowed");
        std::thread::spawn(move || {
            pin_current_thread(&[target]).unwrap();
            assert_eq!(allowed_cpus(), vec![target]);
        })
        .join()
        .unwrap();
    }
}
