//! Guest stores: the WASI view, the limits and the deadline policy of every instance, in one
//! place, laid out the same for contexts, snapshot builds and template builds.
//!
//! A runtime describes what its guest sees as a [`Layout`] (argv, fixed environment,
//! read-only mounts); [`new_store`] adds what belongs to the context (its `/tmp`, its
//! `/home/user`, the caller's environment, the working directory, the output capture and the
//! limits). Time is bounded the same way for every store: the deadline lives in the host
//! state, the engine's ticker advances the epoch every [`TICK`](crate::core::TICK), and the
//! callback registered here traps once the deadline has passed and otherwise yields, so a
//! CPU-bound guest lets other contexts run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::core::Core;
use crate::error::Error;
use crate::execution::Stream;
use crate::files::{GUEST_HOME, HomeDir};
use crate::host::{Boot, DiskQuota, Door, HostState, KernelCode, MemoryLimiter};
use crate::limits::Limits;
use crate::output::{GuestStream, SharedCapture};

/// How long starting an instance may take (restoring a snapshot, loading the kernel, the
/// runtime's own set-up). Not user code, so not in [`Limits`]: a start that takes longer is
/// stuck, and fails instead of hanging the caller.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a runtime's guest sees besides the context's own directories: fixed by the runtime.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    pub argv: Vec<String>,
    /// The runtime's fixed environment, after `HOME` and `TMPDIR` and before the caller's.
    pub env: Vec<(String, String)>,
    /// Read-only host directories, mounted in this order before `/tmp` and `/home/user`.
    pub mounts: Vec<(PathBuf, &'static str)>,
    /// A host directory copied into `/tmp` under this name before the guest starts (a
    /// prebuilt cache the guest may write to).
    pub tmp_seed: Option<(PathBuf, &'static str)>,
    /// The Python kernel the door hands out while the instance boots.
    pub kernel: Option<Arc<KernelCode>>,
}

/// Everything a store is made from besides the runtime's layout.
pub(crate) struct StoreSpec<'a> {
    pub layout: &'a Layout,
    pub limits: &'a Limits,
    /// The guest's whole environment, from [`guest_env`].
    pub env: &'a [(String, String)],
    /// Host directory behind `/tmp`.
    pub tmp: &'a Path,
    pub home: &'a HomeDir,
    pub capture: &'a SharedCapture,
    /// Whether this boot may hand compiled kernel bytecode back for later contexts: only one
    /// whose start the caller cannot influence (no caller environment), so no context can
    /// plant code that others would run.
    pub may_supply_bytecode: bool,
}

/// The guest's environment variables: codebox's own, the runtime's, the caller's, then `PWD`
/// for a working directory other than `/home/user`.
pub(crate) fn guest_env(
    layout: &Layout,
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = [("HOME", GUEST_HOME), ("TMPDIR", "/tmp")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.extend(layout.env.iter().cloned());
    all.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(cwd) = cwd {
        all.push(("PWD".into(), cwd.to_string()));
    }
    all
}

/// A store with a guest's WASI view (args, environment, preopens, clocks), limits and host
/// state, armed with the [`BOOT_TIMEOUT`] deadline.
pub(crate) fn new_store(core: &Core, spec: &StoreSpec) -> Result<Store<HostState>, Error> {
    let layout = spec.layout;
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(GuestStream::new(spec.capture.clone(), Stream::Stdout))
        .stderr(GuestStream::new(spec.capture.clone(), Stream::Stderr))
        .allow_blocking_current_thread(true)
        .args(&layout.argv)
        // Instances may start from a snapshot: the clock must read later than at the build.
        .monotonic_clock(AnchoredMonotonicClock::new());
    for (key, value) in spec.env {
        wasi.env(key, value);
    }
    // The order matters to the runtimes: their mounts, then /tmp, then home.
    for (host, guest) in &layout.mounts {
        preopen(&mut wasi, host, guest, FsPerms::ReadOnly)?;
    }
    if let Some((seed, name)) = &layout.tmp_seed {
        copy_seed(seed, &spec.tmp.join(name))?;
    }
    preopen(&mut wasi, spec.tmp, "/tmp", FsPerms::ReadWrite)?;
    preopen(
        &mut wasi,
        spec.home.host_path(),
        GUEST_HOME,
        FsPerms::ReadWrite,
    )?;

    let state = HostState {
        wasi: wasi.build_p1(),
        memory: MemoryLimiter {
            limit: spec.limits.memory_bytes as usize,
            refused: false,
        },
        door: Door {
            boot: layout.kernel.clone().map(|kernel| Boot {
                kernel,
                may_supply_bytecode: spec.may_supply_bytecode,
            }),
            ..Door::default()
        },
        quota: DiskQuota::new(
            spec.limits.disk_bytes,
            vec![spec.home.host_path().to_path_buf(), spec.tmp.to_path_buf()],
        ),
        deadline: Instant::now() + BOOT_TIMEOUT,
        forward: None,
    };
    let mut store = Store::new(core.wasm(), state);
    store.limiter(|s| &mut s.memory);
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline {
            Err(Trap::Interrupt.into())
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    if core.fuel_metering() {
        store
            .set_fuel(u64::MAX)
            .map_err(|e| Error::internal_from("setting fuel", e))?;
    }
    Ok(store)
}

/// Arms the store for one execution: when it must stop, the fuel it may burn when the
/// engine meters fuel (unbounded when `fuel` is `None`), and no refusals recorded yet by the
/// memory limit or the disk quota.
pub(crate) fn arm(
    store: &mut Store<HostState>,
    deadline: Instant,
    fuel: Option<u64>,
    metered: bool,
) -> Result<(), Error> {
    let data = store.data_mut();
    data.deadline = deadline;
    data.memory.refused = false;
    data.quota.start_execution();
    store.set_epoch_deadline(1);
    if metered {
        store
            .set_fuel(fuel.unwrap_or(u64::MAX))
            .map_err(|e| Error::internal_from("setting fuel", e))?;
    }
    Ok(())
}

fn preopen(
    wasi: &mut WasiCtxBuilder,
    host: &Path,
    guest: &str,
    perms: FsPerms,
) -> Result<(), Error> {
    wasi.preopened_dir(host, guest, perms)
        .map(|_| ())
        .map_err(|e| Error::internal_from(&format!("mounting {} at {guest}", host.display()), e))
}

/// The guest's monotonic clock: nanoseconds since the Unix epoch when the store was made, then
/// advancing with the host's monotonic clock. An instance restored from a snapshot therefore
/// reads later times than its build did (`time.monotonic()` never goes backwards across the
/// snapshot), as long as the host's wall clock was not set back in between.
struct AnchoredMonotonicClock {
    anchor_ns: u64,
    started: Instant,
}

impl AnchoredMonotonicClock {
    fn new() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        AnchoredMonotonicClock {
            anchor_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX / 2),
            started: Instant::now(),
        }
    }
}

impl wasmtime_wasi::HostMonotonicClock for AnchoredMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX / 2);
        self.anchor_ns.saturating_add(elapsed)
    }
}

/// Copies the regular files of `from` into `target` (a directory in the context's `/tmp`).
/// A copy, not a link: the guest may write there. A recycled `/tmp` keeps its copy only if it
/// is exactly the original.
fn copy_seed(from: &Path, target: &Path) -> Result<(), Error> {
    if target.exists() {
        if same_files(from, target) {
            return Ok(());
        }
        std::fs::remove_dir_all(target).map_err(|e| Error::io(target, e))?;
    }
    std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    for entry in std::fs::read_dir(from)
        .map_err(|e| Error::io(from, e))?
        .flatten()
    {
        let dest = target.join(entry.file_name());
        std::fs::copy(entry.path(), &dest).map_err(|e| Error::io(&dest, e))?;
    }
    Ok(())
}

/// Whether directory `copy` holds exactly the regular files of `original`, byte for byte.
fn same_files(original: &Path, copy: &Path) -> bool {
    let names = |dir: &Path| -> Option<Vec<std::ffi::OsString>> {
        let mut names = std::fs::read_dir(dir)
            .ok()?
            .map(|e| e.ok().map(|e| e.file_name()))
            .collect::<Option<Vec<_>>>()?;
        names.sort();
        Some(names)
    };
    let Some(wanted) = names(original) else {
        return false;
    };
    if names(copy).as_ref() != Some(&wanted) {
        return false;
    }
    wanted.iter().all(|name| {
        let path = copy.join(name);
        let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
        regular && std::fs::read(&path).ok() == std::fs::read(original.join(name)).ok()
    })
}
