//! Per-store state: the sandboxed WASI context (no files, no network, no
//! environment, frozen clocks), the memory limiter, and the `log` import.

use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::sluice::plugin::{log, types};

/// Most log records kept per call; the rest are counted as dropped.
const MAX_LOGS_PER_CALL: usize = 100;
/// Longest log message or field kept, in bytes; longer ones are cut.
const MAX_LOG_BYTES: usize = 4096;

/// A log record written by the plugin during the current call.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub level: &'static str,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// Data of one wasmtime `Store`: one plugin instance of one installation.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory_limit: usize,
    /// Set when the plugin tried to grow past `memory_limit`, so the trap that
    /// follows is reported as a memory-limit fault.
    pub(crate) memory_exceeded: bool,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) logs_dropped: u32,
}

/// Plugins get no clock: time stands still at the Unix epoch. This keeps plugin
/// output a function of its input (dry runs, shadow runs and replays agree) and
/// takes away timers for side channels. Events carry their own times.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl HostState {
    pub fn new(memory_limit: u64) -> HostState {
        // Nothing is inherited: no arguments, no environment, no preopened
        // directories, no stdio, no sockets, no name lookups.
        let wasi = WasiCtxBuilder::new()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
            memory_exceeded: false,
            logs: Vec::new(),
            logs_dropped: 0,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            wasmtime::bail!("plugin memory limit of {} bytes exceeded", self.memory_limit);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any
        // honest plugin and bounds a table bomb.
        if desired > 100_000 {
            self.memory_exceeded = true;
            wasmtime::bail!("plugin table limit of 100000 elements exceeded");
        }
        Ok(true)
    }
}

impl types::Host for HostState {}

fn cut(mut s: String) -> String {
    if s.len() > MAX_LOG_BYTES {
        let mut end = MAX_LOG_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl log::Host for HostState {
    fn log(&mut self, level: types::Level, message: String, fields: Vec<(String, String)>) {
        if self.logs.len() >= MAX_LOGS_PER_CALL {
            self.logs_dropped += 1;
            return;
        }
        let level = match level {
            types::Level::Trace => "trace",
            types::Level::Debug => "debug",
            types::Level::Info => "info",
            types::Level::Warn => "warn",
            types::Level::Error => "error",
        };
        let fields = fields.into_iter().take(32).map(|(k, v)| (cut(k), cut(v))).collect();
        self.logs.push(LogRecord { level, message: cut(message), fields });
    }
}
