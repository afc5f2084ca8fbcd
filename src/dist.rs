//! Data parallelism on c10d, PyTorch's collective engine, through the thin C++ binding in
//! `csrc/dist.cpp`: NCCL moves CUDA tensors (in a `cuda` build on a machine with a GPU), Gloo over
//! TCP moves the rest, as torch's `cpu:gloo,cuda:nccl`. A process is one rank of a world set up as
//! torchrun does: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` in the
//! environment (`reasonrl launch` sets them). Without them the world is this process alone and
//! every collective is a no-op.
//!
//! The rules every trainer follows:
//! - every rank starts from rank 0's weights ([`broadcast_weights`]);
//! - every rank plans the same global batches and works on its share of each ([`shard`]);
//! - gradients are summed over ranks after backward, before clipping and the optimiser
//!   ([`all_reduce_grads`]), with losses already divided by the global normaliser;
//! - sampled episodes are gathered, so every rank holds the whole pool, group or record set;
//! - only rank 0 writes files and draws progress bars (`fsutil` and `progress` ask [`is_main`]).

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;
use std::time::Duration;
use tch::{Kind, Tensor};

/// Seconds a collective may wait for the other ranks before failing (`REASONRL_DIST_TIMEOUT`).
pub const DEFAULT_TIMEOUT_S: u64 = 600;

mod ffi {
    use super::*;
    extern "C" {
        pub fn rr_dist_init(
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            nccl: c_int,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn rr_dist_free(group: *mut c_void);
        pub fn rr_dist_free_error(message: *mut c_char);
        pub fn rr_dist_all_reduce(group: *mut c_void, tensor: *mut c_void, op: c_int) -> *mut c_char;
        pub fn rr_dist_broadcast(group: *mut c_void, tensor: *mut c_void, root: c_int) -> *mut c_char;
        pub fn rr_dist_all_gather(group: *mut c_void, output: *mut c_void, input: *mut c_void) -> *mut c_char;
        pub fn rr_dist_barrier(group: *mut c_void) -> *mut c_char;
    }
}

/// This process's place in the world.
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    group: Option<Group>,
}

struct Group {
    handle: *mut c_void,
    /// Whether CUDA tensors move through NCCL; without it they are staged through the host.
    nccl: bool,
}

// The c10d group is used from one thread at a time (the trainer's), and c10d itself is
// thread-safe for that.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { ffi::rr_dist_free(self.handle) }
    }
}

/// How reductions combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Max,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world this process belongs to (one rank alone until [`init_from_env`] says otherwise).
pub fn world() -> &'static World {
    WORLD.get_or_init(World::single)
}

/// Whether this process writes files and draws bars: rank 0, or a process on its own.
pub fn is_main() -> bool {
    world().rank == 0
}

/// Joins the world the torchrun variables describe; without `WORLD_SIZE` (or with 1) the
/// process stays alone and nothing is set up. Call once, before any other use of this module.
pub fn init_from_env() -> Result<&'static World> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let number = |name: &str, value: String| {
        value.parse::<usize>().map_err(|_| Error::Invalid(format!("{name}={value:?} is not a number")))
    };
    let size = match var("WORLD_SIZE") {
        None => 1,
        Some(v) => number("WORLD_SIZE", v)?,
    };
    if size <= 1 {
        return Ok(world());
    }
    let need = |name: &str| {
        var(name).ok_or_else(|| Error::Invalid(format!("WORLD_SIZE={size} but {name} is not set (torchrun sets it)")))
    };
    let rank = number("RANK", need("RANK")?)?;
    let local_rank = var("LOCAL_RANK").map(|v| number("LOCAL_RANK", v)).transpose()?.unwrap_or(rank);
    let host = need("MASTER_ADDR")?;
    let port = number("MASTER_PORT", need("MASTER_PORT")?)?;
    let timeout_s = var("REASONRL_DIST_TIMEOUT").map(|v| number("REASONRL_DIST_TIMEOUT", v)).transpose()?;
    let timeout = Duration::from_secs(timeout_s.map_or(DEFAULT_TIMEOUT_S, |s| s as u64));
    if rank >= size || port == 0 || port > 65535 {
        return Err(Error::Invalid(format!("bad world: RANK={rank}, WORLD_SIZE={size}, MASTER_PORT={port}")));
    }
    let nccl = match var("REASONRL_DIST_BACKEND").as_deref() {
        None => cfg!(feature = "cuda") && tch::Cuda::is_available(),
        Some("gloo") => false,
        Some("nccl") => true,
        Some(other) => return Err(Error::Invalid(format!("REASONRL_DIST_BACKEND={other:?}: expected gloo or nccl"))),
    };
    let world = World::connect(&host, port, rank, size, local_rank, timeout, nccl)?;
    if WORLD.set(world).is_err() {
        return Err(Error::Invalid("the distributed world was set up twice".into()));
    }
    Ok(self::world())
}

/// The first line of a message from the shim, which is freed.
fn take_message(message: *mut c_char) -> String {
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().lines().next().unwrap_or("").to_string();
    unsafe { ffi::rr_dist_free_error(message) };
    text
}

impl Group {
    fn connect(host: &str, port: usize, rank: usize, size: usize, timeout: Duration, nccl: bool) -> Result<Group> {
        let c_host = CString::new(host).map_err(|_| Error::Invalid(format!("MASTER_ADDR {host:?}")))?;
        let mut handle = std::ptr::null_mut();
        let err = unsafe {
            ffi::rr_dist_init(
                c_host.as_ptr(),
                port as c_int,
                rank as c_int,
                size as c_int,
                timeout.as_millis() as i64,
                nccl as c_int,
                &mut handle,
            )
        };
        if !err.is_null() {
            return Err(Error::Invalid(format!(
                "rank {rank} of {size} could not join the group at {host}:{port} within {} s: {}",
                timeout.as_secs(),
                take_message(err)
            )));
        }
        Ok(Group { handle, nccl })
    }

    /// `tensor` itself where a backend moves its device, else a host copy (a CUDA tensor without
    /// NCCL); [`Group::unstage`] copies a result back.
    fn stage(&self, tensor: &Tensor) -> Tensor {
        if tensor.device().is_cuda() && !self.nccl {
            tensor.to_device(tch::Device::Cpu)
        } else {
            tensor.shallow_clone()
        }
    }

    fn unstage(tensor: &mut Tensor, staged: &Tensor) {
        if staged.device() != tensor.device() {
            tch::no_grad(|| tensor.copy_(staged));
        }
    }
}

impl World {
    fn single() -> World {
        World { rank: 0, size: 1, local_rank: 0, group: None }
    }

    /// Joins a world of `size` ranks whose rank 0 hosts the rendezvous at `host:port`, without
    /// making it this process's [`world`] (that is [`init_from_env`]'s). With `nccl`, CUDA tensors
    /// go through NCCL (a `cuda` build only); a world of one still runs every collective.
    pub fn connect(
        host: &str,
        port: usize,
        rank: usize,
        size: usize,
        local_rank: usize,
        timeout: Duration,
        nccl: bool,
    ) -> Result<World> {
        let group = Group::connect(host, port, rank, size, timeout, nccl)?;
        Ok(World { rank, size, local_rank, group: Some(group) })
    }

    /// Sums (or maxes) `tensor` over ranks, in place.
    pub fn all_reduce(&self, tensor: &mut Tensor, op: Reduce) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let op = match op {
            Reduce::Sum => 0,
            Reduce::Max => 1,
        };
        let mut staged = g.stage(tensor);
        self.check("all_reduce", unsafe { ffi::rr_dist_all_reduce(g.handle, staged.as_mut_ptr() as *mut c_void, op) })?;
        Group::unstage(tensor, &staged);
        Ok(())
    }

    /// Copies rank `root`'s `tensor` into every rank's, in place.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        let mut staged = g.stage(tensor);
        self.check("broadcast", unsafe {
            ffi::rr_dist_broadcast(g.handle, staged.as_mut_ptr() as *mut c_void, root as c_int)
        })?;
        Group::unstage(tensor, &staged);
        Ok(())
    }

    /// Every rank's `tensor` (same shape on all), stacked in rank order: `[world, ...]`, on
    /// `tensor`'s device.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let Some(g) = &self.group else { return Ok(tensor.unsqueeze(0)) };
        let mut input = g.stage(&tensor.contiguous());
        let mut shape = vec![self.size as i64];
        shape.extend(tensor.size());
        let mut output = Tensor::zeros(shape.as_slice(), (tensor.kind(), input.device()));
        self.check("all_gather", unsafe {
            ffi::rr_dist_all_gather(g.handle, output.as_mut_ptr() as *mut c_void, input.as_mut_ptr() as *mut c_void)
        })?;
        Ok(output.to_device(tensor.device()))
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> Result<()> {
        let Some(g) = &self.group else { return Ok(()) };
        self.check("barrier", unsafe { ffi::rr_dist_barrier(g.handle) })
    }

    /// Ok, or the error of a failed collective: which one, this rank, and c10d's message.
    fn check(&self, what: &str, message: *mut c_char) -> Result<()> {
        if message.is_null() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "distributed {what} failed on rank {} of {} (another rank stopped, or took longer than \
             REASONRL_DIST_TIMEOUT): {}",
            self.rank,
            self.size,
            take_message(message)
        )))
    }

    /// The sum over ranks of each of `values`.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.group.is_none() {
            return Ok(values.to_vec());
        }
        let mut t = Tensor::from_slice(values);
        self.all_reduce(&mut t, Reduce::Sum)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// [`World::sum`] of a fixed number of values (the means a step logs).
    pub fn sum_each<const N: usize>(&self, values: [f64; N]) -> Result<[f64; N]> {
        Ok(self.sum(&values)?.try_into().expect("one sum per value"))
    }

    /// Whether `flag` holds on any rank (a stop request seen by one rank stops all).
    pub fn any(&self, flag: bool) -> Result<bool> {
        Ok(self.sum(&[flag as u8 as f64])?[0] > 0.0)
    }

    /// Every rank's `items`, concatenated in rank order (sent as JSON bytes).
    pub fn all_gather_items<T: serde::Serialize + serde::de::DeserializeOwned>(&self, items: Vec<T>) -> Result<Vec<T>> {
        if self.group.is_none() {
            return Ok(items);
        }
        let bytes =
            serde_json::to_vec(&items).map_err(|e| Error::Invalid(format!("cannot encode for a gather: {e}")))?;
        let lengths = self.all_gather(&Tensor::from_slice(&[bytes.len() as i64]))?;
        let lengths = Vec::<i64>::try_from(lengths.reshape([-1]))?;
        let longest = *lengths.iter().max().unwrap_or(&0) as usize;
        let mut padded = bytes;
        padded.resize(longest, 0);
        let gathered = self.all_gather(&Tensor::from_slice(&padded))?;
        let mut out = Vec::new();
        for (rank, &n) in lengths.iter().enumerate() {
            let row = Vec::<u8>::try_from(gathered.get(rank as i64).narrow(0, 0, n))?;
            let part: Vec<T> = serde_json::from_slice(&row)
                .map_err(|e| Error::Invalid(format!("rank {rank} sent a gather that does not decode: {e}")))?;
            out.extend(part);
        }
        Ok(out)
    }

    /// The indices of `0..n` this rank works on: a contiguous block, so rank order is index order.
    pub fn shard(&self, n: usize) -> std::ops::Range<usize> {
        shard(n, self.rank, self.size)
    }

    /// Copies rank 0's parameters into every rank's (at the start of training, so all ranks begin
    /// from the same weights even when each initialised its own).
    pub fn broadcast_weights(&self, vs: &tch::nn::VarStore) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        sorted(vs).into_iter().try_for_each(|(_, mut t)| self.broadcast(&mut t, 0))
    }

    /// Sums every trainable parameter's gradient over ranks, in buckets of about 16M values
    /// (flattened in f32, so a bucket is one collective). A parameter without a gradient counts as
    /// zero.
    pub fn all_reduce_grads(&self, vs: &tch::nn::VarStore) -> Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        const BUCKET: i64 = 1 << 24;
        let params: Vec<Tensor> = sorted(vs).into_iter().map(|(_, t)| t).filter(|t| t.requires_grad()).collect();
        // A rank with nothing to learn from this step (an empty shard) ran no backward: give its
        // parameters zero gradients so every rank sends the same buckets.
        let missing: Vec<&Tensor> = params.iter().filter(|p| !p.grad().defined()).collect();
        if !missing.is_empty() {
            let zero: Tensor = missing.iter().map(|p| p.sum(Kind::Float) * 0.0).sum();
            zero.backward();
        }
        let mut start = 0;
        while start < params.len() {
            let mut end = start;
            let mut numel = 0;
            while end < params.len() && (end == start || numel + params[end].numel() as i64 <= BUCKET) {
                numel += params[end].numel() as i64;
                end += 1;
            }
            let grads: Vec<Tensor> =
                params[start..end].iter().map(|p| p.grad().to_kind(Kind::Float).reshape([-1])).collect();
            let mut flat = Tensor::cat(&grads, 0);
            self.all_reduce(&mut flat, Reduce::Sum)?;
            let mut offset = 0;
            tch::no_grad(|| {
                for p in &params[start..end] {
                    let n = p.numel() as i64;
                    p.grad().copy_(&flat.narrow(0, offset, n).view_as(p));
                    offset += n;
                }
            });
            start = end;
        }
        Ok(())
    }
}

/// The block of `0..n` that rank `rank` of `size` takes: sizes differ by at most one.
pub fn shard(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (rank * n / size)..((rank + 1) * n / size)
}

/// A VarStore's variables in name order, the same on every rank.
fn sorted(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_index_once_in_order() {
        for n in [0, 1, 5, 64, 101] {
            for size in 1..5 {
                let all: Vec<usize> = (0..size).flat_map(|r| shard(n, r, size)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>());
                let lens: Vec<usize> = (0..size).map(|r| shard(n, r, size).len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{lens:?}");
            }
        }
    }

    #[test]
    fn alone_every_collective_is_the_identity() {
        let w = world();
        assert_eq!((w.rank, w.size), (0, 1));
        assert_eq!(w.sum(&[1.5, 2.0]).unwrap(), vec![1.5, 2.0]);
        assert!(!w.any(false).unwrap());
        assert_eq!(w.all_gather_items(vec![3, 4]).unwrap(), vec![3, 4]);
        let mut t = Tensor::from_slice(&[1f32, 2.0]);
        w.all_reduce(&mut t, Reduce::Sum).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
    }

    /// A rendezvous port nobody holds now (the store binds it right after).
    fn free_port() -> usize {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port() as usize
    }

    /// A world of one with a real group, whose collectives must run and leave every value as is,
    /// on `device`; `all_reduce_grads` must leave a model's gradients as backward made them.
    fn check_world_of_one(nccl: bool, device: tch::Device) {
        let w = World::connect("127.0.0.1", free_port(), 0, 1, 0, Duration::from_secs(60), nccl).unwrap();
        let values = Tensor::from_slice(&[1f32, -2.5, 3.0]).to_device(device);
        let mut t = values.copy();
        w.all_reduce(&mut t, Reduce::Sum).unwrap();
        w.all_reduce(&mut t, Reduce::Max).unwrap();
        w.broadcast(&mut t, 0).unwrap();
        assert_eq!(t.device(), device);
        assert_eq!(Vec::<f32>::try_from(&t.to_device(tch::Device::Cpu)).unwrap(), vec![1.0, -2.5, 3.0]);
        let gathered = w.all_gather(&values).unwrap();
        assert_eq!((gathered.size(), gathered.device()), (vec![1, 3], device));
        assert_eq!(w.all_gather_items(vec!["a".to_string()]).unwrap(), vec!["a".to_string()]);
        assert_eq!(w.sum(&[0.25]).unwrap(), vec![0.25]);
        w.barrier().unwrap();

        let vs = tch::nn::VarStore::new(device);
        let linear = tch::nn::linear(vs.root() / "l", 3, 2, Default::default());
        let _unused = vs.root().zeros("no_grad_yet", &[4]); // counts as a zero gradient
        use tch::nn::Module;
        linear.forward(&values.unsqueeze(0)).sum(Kind::Float).backward();
        let before: Vec<Tensor> = sorted(&vs)
            .iter()
            .map(|(_, p)| if p.grad().defined() { p.grad().copy() } else { p.zeros_like() })
            .collect();
        w.broadcast_weights(&vs).unwrap();
        w.all_reduce_grads(&vs).unwrap();
        for ((name, p), want) in sorted(&vs).iter().zip(&before) {
            assert!(p.grad().allclose(want, 0.0, 0.0, false), "{name}");
        }
    }

    #[test]
    fn a_world_of_one_runs_every_collective_through_gloo() {
        check_world_of_one(false, tch::Device::Cpu);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn nccl_is_refused_by_a_build_without_cuda() {
        let err = World::connect("127.0.0.1", free_port(), 0, 1, 0, Duration::from_secs(60), true).err().unwrap();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    // The GPU checks: `cargo test --release --features cuda --lib dist -- --ignored` on a machine
    // with a CUDA GPU (one is enough: NCCL allows one rank per GPU, so a world of one).
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn a_world_of_one_moves_cuda_tensors_through_nccl() {
        check_world_of_one(true, tch::Device::Cuda(0));
    }

    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn without_nccl_cuda_tensors_go_through_the_host() {
        check_world_of_one(false, tch::Device::Cuda(0));
    }
}
