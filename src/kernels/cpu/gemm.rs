//! Matrix products for the fused kernels, on the gemm crate (the GEMM candle's CPU backend runs
//! on). candle hands gemm each product whole with `Parallelism::Rayon`, which splits the thin
//! products of a small Transformer poorly (on 2 cores, 768x128x128: 141 GFLOP/s, against 85 on
//! one core); here the destination's rows are split into one block per thread and each block is
//! one single-threaded product, which also lets independent products run side by side.

use std::mem::MaybeUninit;
use std::sync::Once;

use gemm::Parallelism;
use rayon::prelude::*;

use super::Real;

/// A read-only matrix operand: element (i, j) is at `ptr + i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub struct MatRef<T> {
    pub ptr: *const T,
    pub row_stride: isize,
    pub col_stride: isize,
}

// The operands are only read, and every caller keeps the memory alive across the product.
unsafe impl<T: Sync> Send for MatRef<T> {}
unsafe impl<T: Sync> Sync for MatRef<T> {}

impl<T> MatRef<T> {
    /// A row-major matrix with row stride `row_stride` starting at `data[offset]`.
    pub fn rows(data: &[T], offset: usize, row_stride: usize) -> Self {
        Self { ptr: data[offset..].as_ptr(), row_stride: row_stride as isize, col_stride: 1 }
    }
    /// The transpose of a row-major matrix with row stride `row_stride` starting at `data[offset]`.
    pub fn transposed(data: &[T], offset: usize, row_stride: usize) -> Self {
        Self { ptr: data[offset..].as_ptr(), row_stride: 1, col_stride: row_stride as isize }
    }
    fn skip_rows(self, rows: usize) -> Self {
        Self { ptr: self.ptr.wrapping_offset(rows as isize * self.row_stride), ..self }
    }
}

/// A destination: row-major with row stride `row_stride`, columns contiguous.
#[derive(Clone, Copy)]
pub struct MatMut<T> {
    pub ptr: *mut T,
    pub row_stride: usize,
}

// Each task writes a disjoint set of rows (or heads' columns); see the callers.
unsafe impl<T: Send> Send for MatMut<T> {}
unsafe impl<T: Send> Sync for MatMut<T> {}

impl<T> MatMut<T> {
    pub fn rows(data: &mut [T], offset: usize, row_stride: usize) -> Self {
        Self { ptr: data[offset..].as_mut_ptr(), row_stride }
    }
    /// As `rows`, over memory not written yet (a product that does not accumulate only writes).
    pub fn uninit_rows(data: &mut [MaybeUninit<T>], offset: usize, row_stride: usize) -> Self {
        Self { ptr: data[offset..].as_mut_ptr().cast(), row_stride }
    }
    /// The same matrix layout starting `offset` elements further on.
    ///
    /// # Safety
    /// The result must stay inside the allocation.
    pub unsafe fn at(self, offset: usize) -> Self {
        Self { ptr: self.ptr.add(offset), ..self }
    }
    /// The `len` elements from the start, as a slice.
    ///
    /// # Safety
    /// They must stay inside the allocation, and nothing else may access them meanwhile.
    pub unsafe fn slice_mut<'a>(self, len: usize) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.ptr, len)
    }
}

/// dst (m x n) = lhs (m x k) . rhs (k x n), plus dst's old value when `accumulate`; on the
/// calling thread.
///
/// # Safety
/// The three operands must address valid memory of the given shapes and strides, and nothing
/// else may access dst's elements meanwhile.
pub unsafe fn product<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: MatMut<T>,
    accumulate: bool,
    lhs: MatRef<T>,
    rhs: MatRef<T>,
) {
    if m == 0 || n == 0 {
        return;
    }
    static TUNED: Once = Once::new();
    TUNED.call_once(|| {
        // gemm copies the left operand into packed panels whenever the product is wider than 8
        // micro-tiles; most of ours (dX, dW and attention's operands) are column-major already
        // and their panels fit in L2, where the copy costs more than it saves: 6 % of a one-thread
        // step, against 2.5 % with only the row-major ones packed (one-thread step ~1.2 % shorter).
        gemm::set_lhs_packing_threshold_single_thread(256);
    });
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        1,
        dst.row_stride as isize,
        accumulate,
        lhs.ptr,
        lhs.col_stride,
        lhs.row_stride,
        rhs.ptr,
        rhs.col_stride,
        rhs.row_stride,
        T::of(1.0),
        T::of(1.0),
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// Multiply-adds below which a product stays on one thread (~15 us of work at 80 GFLOP/s,
/// several times the cost of handing a block to another thread).
const PARALLEL_MIN_WORK: usize = 1 << 19;
/// Rows of the f32 AVX2 micro-kernel; blocks are cut at multiples of it.
const KERNEL_ROWS: usize = 16;

/// dst = lhs . rhs (+ dst when `accumulate`) for a contiguous row-major dst of `m` rows, split
/// into one row block per thread when the product is large enough. Every element of dst is
/// written; dst may be uninitialised unless `accumulate`.
///
/// # Safety
/// lhs and rhs must address valid m x k and k x n matrices; with `accumulate`, dst must be
/// initialised.
pub unsafe fn product_parallel<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<T>],
    accumulate: bool,
    lhs: MatRef<T>,
    rhs: MatRef<T>,
) {
    assert_eq!(dst.len(), m * n, "destination of a {m}x{n} product");
    let threads = rayon::current_num_threads();
    let blocks = if m * n * k < PARALLEL_MIN_WORK { 1 } else { threads.min(m / KERNEL_ROWS).max(1) };
    let rows_per_block = m.div_ceil(blocks).div_ceil(KERNEL_ROWS) * KERNEL_ROWS;
    let run = |first_row: usize, block: &mut [MaybeUninit<T>]| {
        let rows = block.len() / n;
        // SAFETY: `block` is this task's own rows of dst; the operands are as the caller promised.
        unsafe { product((rows, n, k), MatMut::uninit_rows(block, 0, n), accumulate, lhs.skip_rows(first_row), rhs) }
    };
    if blocks == 1 || n == 0 {
        run(0, dst);
    } else {
        dst.par_chunks_mut(rows_per_block * n).enumerate().for_each(|(i, block)| run(i * rows_per_block, block));
    }
}
