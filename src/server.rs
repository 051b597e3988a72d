//! Process start-up: raise the open-file limit, bind one SO_REUSEPORT listener per shard,
//! place one glommio executor per shard on its CPU, and wait for them all to stop.
//!
//! Called by `main` (and by tests that want a server in-process). Owns nothing after start:
//! each shard owns its own state.

use std::io::Write;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};

use crate::config::{ClientAuth, Config, IO_MEMORY_BYTES, MESH_CHANNEL_CAPACITY};
use crate::mesh::{self, Shared};
use crate::{listener, log, portlock, shard};

/// File descriptors a process needs besides its WebSocket connections: listeners, io_uring
/// rings, eventfds, API connections, stdio.
const FDS_RESERVED: u64 = 64;

/// Raises the soft RLIMIT_NOFILE to the hard limit and warns, with both numbers, when even
/// the hard limit is short of what `--max-connections` needs.
pub fn raise_nofile_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        log!(
            warn,
            None,
            "cannot read the open file limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let needed = max_connections as u64 + FDS_RESERVED;
    if limit.rlim_cur < needed {
        log!(
            warn,
            None,
            "open file limit is {} (hard limit {}) but --max-connections {} needs about {}: connections past ~{} will fail to accept; raise LimitNOFILE (see tuning/) or lower --max-connections",
            limit.rlim_cur,
            limit.rlim_max,
            max_connections,
            needed,
            limit.rlim_cur.saturating_sub(FDS_RESERVED)
        );
    }
}

fn placement(config: &Config) -> Result<PoolPlacement, String> {
    let Some(cpus) = &config.cpus else {
        return Ok(PoolPlacement::MaxSpread(config.shards, None));
    };
    let online = CpuSet::online().map_err(|e| format!("cannot read the online CPUs: {e}"))?;
    let mut sets = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let set = online.clone().filter(|loc| loc.cpu == cpu);
        if set.is_empty() {
            let mut ids: Vec<usize> = online.iter().map(|loc| loc.cpu).collect();
            ids.sort_unstable();
            return Err(format!(
                "--cpus: CPU {cpu} is not online here; online CPUs: {ids:?}"
            ));
        }
        sets.push(set);
    }
    Ok(PoolPlacement::Custom(sets))
}

/// Runs volley until a shutdown is requested through `shared` (SIGINT/SIGTERM in `main`).
/// Prints one line on stdout once every listener is bound:
/// `volley: listening on ADDR (ws://ADDR/ws), N shards, pid P`.
pub fn serve(config: Config, shared: Arc<Shared>) -> Result<(), String> {
    raise_nofile_limit(config.max_connections);
    let placement = placement(&config)?;
    let mode = match &config.redis {
        None => portlock::Mode::Standalone,
        Some(redis) => portlock::Mode::Redis {
            prefix: redis.prefix.clone(),
        },
    };
    // Claimed before binding, so a refused start never joins the other process's
    // SO_REUSEPORT group (it would get and then reset some of its clients); port 0 picks a
    // fresh port, claimed once it is known. Held until the shards have stopped.
    let early_claim = match config.listen.port() {
        0 => None,
        _ => Some(portlock::claim(config.listen, &mode)?),
    };
    let (bound, fds) = listener::bind_all(config.listen, config.backlog, config.shards)
        .map_err(|e| listener::explain_bind_error(config.listen, &e))?;
    let _claim = match early_claim {
        Some(claim) => claim,
        None => portlock::claim(bound, &mode)?,
    };
    let fds: Arc<[i32]> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
    let mesh = mesh::build(config.shards, MESH_CHANNEL_CAPACITY);
    if matches!(config.client_auth, ClientAuth::Open) {
        log!(
            warn,
            None,
            "WARNING: no --jwt-secret or --jwt-rs256-key: clients are NOT authenticated and name themselves with ?user=; fine for development, not for an open network"
        );
    }
    if config.insecure_open && !config.listen.ip().is_loopback() {
        log!(
            warn,
            None,
            "WARNING: --insecure-open on {}: {} anyone who reaches this address may use it as they please",
            config.listen,
            match (&config.client_auth, &config.api_key) {
                (ClientAuth::Open, None) => "clients are not authenticated and the API has no key:",
                (ClientAuth::Open, Some(_)) => "clients are not authenticated:",
                (_, None) => "the API has no key (it answers loopback clients only):",
                _ => "keys are set, so this flag changes nothing;",
            }
        );
    }
    if config.api_key.is_none() {
        log!(
            None,
            "no --api-key: the HTTP API (/api/*) answers loopback clients only"
        );
    }
    if config.console {
        log!(
            None,
            "dev console at http://{bound}/ (on in open mode or with --console on; --console off hides it)"
        );
    }

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "volley: listening on {bound} (ws://{bound}/ws), {} shards, pid {}",
            config.shards,
            std::process::id()
        );
        let _ = out.flush();
    }

    let shards = LocalExecutorPoolBuilder::new(placement)
        .name("volley-shard")
        .io_memory(IO_MEMORY_BYTES)
        .on_all_shards({
            let shared = shared.clone();
            move || async move {
                let outcome = shard::run(config, shared.clone(), mesh, fds).await;
                if outcome.is_err() {
                    // One failed shard must not leave the others running without it.
                    shared.request_shutdown();
                }
                outcome
            }
        })
        .map_err(|e| format!("cannot start the shard executors: {e}"))?;

    let mut failures = Vec::new();
    for (i, outcome) in shards.join_all().into_iter().enumerate() {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("shard {i}: {e}")),
            Err(e) => failures.push(format!("shard {i}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
