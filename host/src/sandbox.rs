//! Confinement of the worker processes (`sluice query-worker`,
//! `sluice compile-worker`): limits the kernel enforces on them whatever the
//! code inside them does, so a bug in DuckDB or Cranelift that a tenant
//! triggers stays inside a process that can reach nothing.
//!
//! The server starts workers with [`spawn_worker`]; each worker then calls
//! the limits on itself, first thing (resources) and once its inputs are
//! open (files and network).

use std::path::Path;
use std::process::Stdio;

/// Start `program subcommand` in `dir` as a worker: an empty environment,
/// piped stdio, killed when the handle drops (a request whose client went
/// away ends its worker).
///
/// # Errors
///
/// When the program cannot be started.
pub fn spawn_worker(program: &Path, subcommand: &str, dir: &Path) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new(program)
        .arg(subcommand)
        .env_clear()
        // glibc reserves 64 MiB of address space per malloc arena (up to
        // eight per core), and RLIMIT_AS counts it: two arenas leave the cap
        // to the worker's own work.
        .env("MALLOC_ARENA_MAX", "2")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// Cap this process's address space (and, when given, its CPU seconds), turn
/// off core dumps, and lower its priority below ingest (nice 10).
///
/// # Errors
///
/// When the kernel refuses a limit.
pub fn limit_resources(address_space: u64, cpu_seconds: Option<u64>) -> std::io::Result<()> {
    let limit = |resource, soft: u64, hard: u64| {
        let value = libc::rlimit { rlim_cur: soft, rlim_max: hard };
        // SAFETY: setrlimit takes plain values and affects only this process.
        match unsafe { libc::setrlimit(resource, &value) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    limit(libc::RLIMIT_AS, address_space, address_space)?;
    if let Some(seconds) = cpu_seconds {
        // SIGXCPU at the soft limit, SIGKILL a second later: a backstop for
        // when the server dies before it can kill at the deadline.
        limit(libc::RLIMIT_CPU, seconds, seconds + 1)?;
    }
    // A worker that aborts at its memory cap would otherwise dump gigabytes.
    limit(libc::RLIMIT_CORE, 0, 0)?;
    // SAFETY: as above; affects only this process.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    Ok(())
}

/// Lower the calling thread's priority to `nice` (Linux: a thread has its
/// own nice value). It cannot be raised again without privilege, so only
/// threads that keep this role for life call it.
pub fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain values; on Linux, PRIO_PROCESS with a
    // thread id affects that thread only.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Keep the calling thread, and the threads it starts from now on, off the
/// first half of the cores it may run on (rounded down; at least one core
/// stays its own, and on one core nothing changes), for analysts' work.
///
/// A lower priority alone does not protect the rest: measured on two cores,
/// work that keeps every core busy starves the kernel's own threads
/// (softirq, RCU, workqueues) for hundreds of milliseconds whatever its nice
/// value, and every request of every tenant stalls with them. With half the
/// cores kept free of it, the service's threads and the kernel's always
/// find a core.
pub fn keep_off_first_cores() {
    #[cfg(target_os = "linux")]
    // SAFETY: cpu_set_t is plain data; the calls read and write only the
    // sets we own, and affect only the calling thread.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &allowed)).collect();
        if cpus.len() < 2 {
            return;
        }
        let mut upper: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in &cpus[cpus.len() / 2..] {
            libc::CPU_SET(cpu, &mut upper);
        }
        libc::sched_setaffinity(0, size, &upper);
    }
}

/// A fixed set of threads at a lower priority, for tenants' heavy work
/// (plugin runs, snapshot copies): it competes with itself for the cores,
/// while the service's own work (reading requests, answering, committing)
/// comes first.
pub struct Threads {
    jobs: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
    /// One per thread, held by a job until it ends: the queue never holds
    /// more jobs than threads, and callers beyond wait here, asynchronously.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Threads {
    /// Start `count` threads named `name-N` at nice `nice` (and, with
    /// `off_first_cores`, off the first half of the cores: see
    /// [`keep_off_first_cores`]); they end when the `Threads` is dropped.
    ///
    /// # Errors
    ///
    /// When a thread cannot be started.
    pub fn start(name: &str, count: usize, nice: i32, off_first_cores: bool) -> std::io::Result<Threads> {
        let count = count.max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(count);
        let queue = std::sync::Arc::new(parking_lot::Mutex::new(queue));
        for i in 0..count {
            let queue = queue.clone();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                lower_thread_priority(nice);
                if off_first_cores {
                    keep_off_first_cores();
                }
                loop {
                    let job = queue.lock().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })?;
        }
        Ok(Threads { jobs, slots: std::sync::Arc::new(tokio::sync::Semaphore::new(count)) })
    }

    /// Run `f` on one of the threads; waits while all are busy. A job whose
    /// caller stopped waiting before it started is skipped; one that
    /// started runs to its end.
    ///
    /// # Errors
    ///
    /// When `f` panicked or the threads are gone.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
        let slot = self.slots.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _slot = slot;
            if done.is_closed() {
                return;
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = done.send(outcome);
        });
        self.jobs.try_send(job).map_err(|e| e.to_string())?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err("the job panicked".into()),
            Err(_) => Err("the thread is gone".into()),
        }
    }
}

/// CPU time the calling thread has used so far.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// From now on this process opens no file except below `writable` (nothing
/// at all when `None`), binds and connects no TCP port, and can neither
/// signal processes nor reach abstract UNIX sockets outside itself
/// (Landlock). Files already open stay usable, which is why workers call this
/// after opening their inputs. Returns whether the kernel enforces all of it:
/// `false` on a kernel without Landlock (or one that refuses it), where the
/// workers still run under their other limits.
///
/// # Errors
///
/// When `writable` cannot be opened.
pub fn confine_files(writable: Option<&Path>) -> Result<bool, String> {
    use landlock::{
        Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        Scope, ABI,
    };
    let abi = ABI::V6;
    // The directory first: a worker whose scratch directory is gone cannot
    // work either way.
    let writable = writable.map(PathFd::new).transpose().map_err(|e| e.to_string())?;
    let ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| match writable {
            Some(fd) => r.add_rule(PathBeneath::new(fd, AccessFs::from_all(abi))),
            None => Ok(r),
        })
        .and_then(|r| r.restrict_self());
    match ruleset {
        Ok(status) => Ok(status.ruleset == RulesetStatus::FullyEnforced),
        // The kernel refused Landlock (e.g. a seccomp filter of a
        // container): the same as a kernel without it; the caller reports
        // the worker as unconfined and the other layers remain.
        Err(e) => {
            eprintln!("landlock unavailable: {e}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores_allowed() -> usize {
        // SAFETY: as in keep_off_first_cores.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set), 0);
            libc::CPU_COUNT(&set) as usize
        }
    }

    #[test]
    fn threads_kept_off_the_first_cores_run_on_the_upper_half() {
        let all = std::thread::spawn(cores_allowed).join().unwrap();
        let expect = if all < 2 { all } else { all - all / 2 };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let kept = Threads::start("test-kept", 1, 10, true).unwrap();
        assert_eq!(runtime.block_on(kept.run(cores_allowed)).unwrap(), expect);
        // And the threads they start inherit it.
        let inherited = runtime.block_on(kept.run(|| std::thread::spawn(cores_allowed).join().unwrap())).unwrap();
        assert_eq!(inherited, expect);
        let free = Threads::start("test-free", 1, 10, false).unwrap();
        assert_eq!(runtime.block_on(free.run(cores_allowed)).unwrap(), all);
    }
}
