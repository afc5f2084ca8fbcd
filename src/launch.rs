//! `reasonrl launch`: starts this node's ranks of a data-parallel run, as torchrun does. Each
//! rank is this program again with the torchrun variables set (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`); `dist` reads them. When a
//! rank fails the others are stopped and its exit code is returned.

use crate::error::{Error, Result};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

/// Where this node's ranks sit in the world.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// Ranks on this node.
    pub nproc: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// 0: a free port on this machine (one node only).
    pub master_port: u16,
}

impl Launch {
    /// The environment of local rank `local`.
    pub fn env(&self, local: usize, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("RANK", (self.node_rank * self.nproc + local).to_string()),
            ("WORLD_SIZE", (self.nnodes * self.nproc).to_string()),
            ("LOCAL_RANK", local.to_string()),
            ("LOCAL_WORLD_SIZE", self.nproc.to_string()),
            ("MASTER_ADDR", self.master_addr.clone()),
            ("MASTER_PORT", port.to_string()),
        ]
    }

    /// Runs `args` (a reasonrl command line) as this node's ranks; returns the exit code.
    pub fn run(&self, args: &[String]) -> Result<i32> {
        if self.nproc == 0 || self.nnodes == 0 || self.node_rank >= self.nnodes {
            return Err(Error::Invalid(format!(
                "launch: --nproc and --nnodes must be positive and --node-rank below --nnodes (got {}, {}, {})",
                self.nproc, self.nnodes, self.node_rank
            )));
        }
        let port = match self.master_port {
            0 if self.nnodes > 1 => return Err(Error::Invalid("launch: several nodes need --master-port".into())),
            0 => free_port()?,
            p => p,
        };
        let exe = std::env::current_exe().map_err(|e| Error::Invalid(format!("launch: cannot find myself: {e}")))?;
        let mut ranks: Vec<Option<Child>> = Vec::new();
        for local in 0..self.nproc {
            let mut cmd = Command::new(&exe);
            cmd.args(args).envs(self.env(local, port));
            if std::env::var_os("OMP_NUM_THREADS").is_none() {
                // The node's cores shared out, as torchrun does, not every rank on all of them.
                cmd.env("OMP_NUM_THREADS", threads_per_rank(self.nproc).to_string());
            }
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM); // a killed launcher takes its ranks
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(child) => ranks.push(Some(child)),
                Err(e) => {
                    stop_all(&mut ranks);
                    return Err(Error::Invalid(format!("launch: cannot start rank {local}: {e}")));
                }
            }
        }
        loop {
            let mut running = 0;
            for local in 0..ranks.len() {
                let Some(child) = ranks[local].as_mut() else { continue };
                match child.try_wait().map_err(|e| Error::Invalid(format!("launch: rank {local}: {e}")))? {
                    None => running += 1,
                    Some(status) if status.success() => ranks[local] = None,
                    Some(status) => {
                        ranks[local] = None;
                        stop_all(&mut ranks);
                        eprintln!("launch: local rank {local} failed ({status}); stopped the others");
                        return Ok(status.code().unwrap_or(1));
                    }
                }
            }
            if running == 0 {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// This node's cores divided among `nproc` ranks (at least one each).
fn threads_per_rank(nproc: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / nproc.max(1)).max(1)
}

/// SIGTERM to every rank still running, then SIGKILL to those that ignore it for 10 s.
fn stop_all(ranks: &mut [Option<Child>]) {
    for child in ranks.iter().flatten() {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for child in ranks.iter_mut().flatten() {
        while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A port nothing listens on now (the rendezvous store binds it a moment later).
pub fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Invalid(format!("launch: no free port: {e}")))?;
    Ok(listener.local_addr().map_err(|e| Error::Invalid(format!("launch: {e}")))?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_numbered_across_nodes() {
        let launch = Launch { nproc: 2, nnodes: 3, node_rank: 1, master_addr: "10.0.0.1".into(), master_port: 29500 };
        let env: std::collections::HashMap<_, _> = launch.env(1, 29500).into_iter().collect();
        assert_eq!(env["RANK"], "3");
        assert_eq!(env["WORLD_SIZE"], "6");
        assert_eq!(env["LOCAL_RANK"], "1");
        assert_eq!(env["MASTER_ADDR"], "10.0.0.1");
        assert!(Launch { node_rank: 3, ..launch.clone() }.run(&[]).is_err());
        assert!(Launch { master_port: 0, ..launch }.run(&[]).unwrap_err().to_string().contains("--master-port"));
    }
}
