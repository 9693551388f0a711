//! lmhost's patch: what the lmhost kit needs from candle that candle does not offer.
//!
//! - [`counters`]: how many tensor ops this copy of candle issued and how many times a tensor's
//!   values were read back to the host, so a training step can be checked to make no read-backs
//!   and a number of ops that does not grow with the parameter count.
//! - [`Arena`]: one buffer that many variables are views of, so an optimiser can update every
//!   parameter with a handful of ops over the whole buffer instead of a dozen ops per parameter.
//! - [`flops`]: the floating-point operations of the matrix products a thread issued, so a model
//!   can count what one forward pass costs from the products it actually runs.
//! - [`matmul`]: the f32 matrix product, from a BLAS loaded at run time or from gemm.

pub mod matmul;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::tensor::variable_view;
use crate::{DType, Device, Layout, Result, Shape, Storage, Tensor};

static OPS: AtomicU64 = AtomicU64::new(0);
static HOST_READS: AtomicU64 = AtomicU64::new(0);

/// Counts of what this copy of candle did since the process started (each plugin library links
/// its own copy, so each counts its own).
pub mod counters {
    use super::*;

    /// Tensor ops issued: every op that produced a new storage (a kernel on a GPU, views
    /// excluded) and every in-place write.
    pub fn ops() -> u64 {
        OPS.load(Ordering::Relaxed)
    }

    /// Reads of a tensor's values by the host (`to_scalar`, `to_vec*`, a copy to the CPU):
    /// each is a synchronisation on a GPU.
    pub fn host_reads() -> u64 {
        HOST_READS.load(Ordering::Relaxed)
    }
}

/// The matrix products' FLOPs of the calling thread (2·m·n·k per product: a multiply and an add).
pub mod flops {
    use std::cell::Cell;

    thread_local! {
        static MATMUL: Cell<u64> = const { Cell::new(0) };
    }

    /// FLOPs of the matrix products this thread issued since it started.
    pub fn matmul() -> u64 {
        MATMUL.with(Cell::get)
    }

    /// Counts the product of a (batch, m, k) and a (batch, k, n) operand, for kernels outside
    /// candle's `matmul` that multiply matrices (a fused attention, a fused dense layer).
    pub fn count_matmul(batch: usize, m: usize, n: usize, k: usize) {
        MATMUL.with(|c| c.set(c.get() + 2 * (batch * m * n * k) as u64));
    }
}

#[inline]
pub(crate) fn count_op() {
    OPS.fetch_add(1, Ordering::Relaxed);
}

#[inline]
pub(crate) fn count_host_read() {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
}

/// A growable buffer of one dtype on one device whose parts are handed out as variables.
///
/// Every tensor [`push`](Arena::push) returns is a variable of its own (its own id, so the
/// backward pass gives it its own gradient) that shares the arena's storage; [`whole`](Arena::whole)
/// is a variable over every element. Growing reallocates the storage inside the lock the views
/// share, so views made earlier stay valid.
pub struct Arena {
    storage: Arc<RwLock<Storage>>,
    len: usize,
    capacity: usize,
    dtype: DType,
    device: Device,
}

impl Arena {
    pub fn new(dtype: DType, device: &Device) -> Result<Self> {
        let storage = device.zeros(&Shape::from(0), dtype)?;
        Ok(Self { storage: Arc::new(RwLock::new(storage)), len: 0, capacity: 0, dtype, device: device.clone() })
    }

    /// Elements handed out so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Appends `values` (converted to the arena's dtype and device) and returns a variable of
    /// their shape viewing them.
    pub fn push(&mut self, values: &Tensor) -> Result<Tensor> {
        let values = values.to_dtype(self.dtype)?.to_device(&self.device)?;
        let n = values.elem_count();
        let offset = self.len;
        if offset + n > self.capacity {
            self.reallocate((offset + n).max(2 * self.capacity))?;
        }
        {
            let mut storage = self.storage.write();
            let (src, src_l) = values.storage_and_layout();
            src.copy_strided_src(&mut storage, offset, src_l)?;
        }
        self.len += n;
        Ok(self.view(offset, values.shape().clone()))
    }

    /// A variable viewing `len` elements from `offset` as `shape`.
    fn view(&self, offset: usize, shape: Shape) -> Tensor {
        variable_view(
            self.storage.clone(),
            Layout::contiguous_with_offset(shape, offset),
            self.dtype,
            self.device.clone(),
        )
    }

    /// A variable over every element, `(len,)`: for whole-buffer ops and `Var::set`.
    pub fn whole(&self) -> Tensor {
        self.view(0, Shape::from(self.len))
    }

    /// Drops the spare capacity growth left (one copy of the used part).
    pub fn shrink_to_fit(&mut self) -> Result<()> {
        if self.capacity > self.len {
            self.reallocate(self.len)?;
        }
        Ok(())
    }

    fn reallocate(&mut self, capacity: usize) -> Result<()> {
        let mut fresh = self.device.zeros(&Shape::from(capacity), self.dtype)?;
        let mut storage = self.storage.write();
        if self.len > 0 {
            storage.copy_strided_src(&mut fresh, 0, &Layout::contiguous(self.len))?;
        }
        *storage = fresh;
        self.capacity = capacity;
        Ok(())
    }
}
