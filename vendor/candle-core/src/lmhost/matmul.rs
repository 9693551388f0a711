//! lmhost's patch: the CPU's f32 matrix product, from a BLAS loaded at run time when one is
//! present (OpenBLAS or BLIS, run on one thread), else from the `gemm` crate.
//!
//! On an AVX2-only AMD EPYC the mature BLAS libraries ran a step's products up to a third faster
//! than `gemm` 0.19, and OpenBLAS made the tiny step ≈ 15 % faster, paired; with AVX-512 gemm
//! is the faster (bench/NOTES.md). A BLAS is loaded with `dlopen`, not linked, so a build needs
//! no BLAS and a machine without one trains as before. Which one is used is
//! [`backend`]'s `name`: the host records it with every run and counts it in the fingerprint,
//! since another library rounds differently.
//!
//! `LMHOST_BLAS` chooses: `auto` (the default: gemm where the CPU has AVX-512, for which gemm
//! has kernels and Debian's OpenBLAS 0.3.21 may not; elsewhere the first of OpenBLAS and BLIS
//! found, else gemm), `gemm`, `openblas`, `blis`, or the path of a library with `cblas_sgemm`.
//!
//! The BLAS runs one thread: the kit's data-parallel shards already give each core its own
//! products, and a BLAS thread pool would fight them. It is still OpenBLAS's threaded build,
//! set to one thread: the shards call it at once, and the single-threaded build (Debian's
//! `openblas-serial`) has no locks, so concurrent calls race — measured: a trainer test's losses
//! differed between identical runs in 3 of 12 — and it is refused. A product with more
//! threads available (outside a shard) is split into row blocks run in parallel. Row blocks are fixed in size,
//! whatever the thread count, so a result never depends on how many threads computed it.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

/// The variable that chooses the backend.
pub const BLAS_ENV: &str = "LMHOST_BLAS";

/// Rows per BLAS call: a product of more rows is split into blocks of this many.
pub const ROW_BLOCK: usize = 256;

/// CBLAS's row-major order and transpose flags.
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// The library that computes the products.
pub struct Backend {
    /// What the products are computed with, as recorded with a run: `gemm`, or the library's
    /// own description (`OpenBLAS 0.3.21 … Zen SINGLE_THREADED`, `BLIS 0.9.0 zen3`).
    pub name: Cow<'static, str>,
    sgemm: Option<Sgemm>,
}

impl Backend {
    /// The `gemm` crate.
    pub const GEMM: Backend = Backend { name: Cow::Borrowed("gemm"), sgemm: None };

}

/// The backend this process uses, chosen once from `LMHOST_BLAS`; an error names a library
/// that was asked for and could not be loaded (the products then use gemm).
pub fn backend() -> Result<&'static Backend, &'static str> {
    static BACKEND: OnceLock<Result<Backend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| choose(std::env::var(BLAS_ENV).ok().as_deref().unwrap_or("auto")))
        .as_ref()
        .map_err(String::as_str)
}

/// Every backend this machine has: gemm, then each known BLAS that loads (to compare them).
pub fn found() -> Vec<Backend> {
    std::iter::once(Backend::GEMM).chain(KNOWN.iter().filter_map(|(name, _)| choose(name).ok())).collect()
}

/// The backend for one `LMHOST_BLAS` value.
pub fn choose(request: &str) -> Result<Backend, String> {
    let gemm = || Backend::GEMM;
    match request {
        "" | "auto" if gemm_has_avx512() => Ok(gemm()),
        "" | "auto" => Ok(KNOWN.iter().find_map(|(_, paths)| paths.iter().find_map(|p| load(p).ok())).unwrap_or_else(gemm)),
        "gemm" => Ok(gemm()),
        name => match KNOWN.iter().find(|(known, _)| *known == name) {
            Some((_, paths)) => {
                let mut last = String::new();
                for path in paths.iter() {
                    match load(path) {
                        Ok(backend) => return Ok(backend),
                        Err(e) => last = e,
                    }
                }
                Err(format!("{BLAS_ENV}={name}: {last}; install it (Debian: apt-get install {}) or set {BLAS_ENV}=gemm", package(name)))
            }
            None if name.contains('/') => {
                load(name).map_err(|e| format!("{BLAS_ENV}={name}: {e}; give a library with cblas_sgemm, or auto, gemm, openblas, blis"))
            }
            None => Err(format!("{BLAS_ENV}={name} is not a backend: use auto, gemm, openblas, blis or a library's path")),
        },
    }
}

/// Whether gemm runs its AVX-512 kernels here (x86-64-v4, as its `x86-v4` feature asks). Then
/// `auto` keeps gemm: on an AVX-512 EPYC (Zen 5) it ran a tiny step's products at 1.0–2.2×
/// the speed of OpenBLAS 0.3.21, which does not know that CPU and runs its Haswell kernels, and
/// the whole step 1.5× faster; on a Xeon with AVX-512 it matched MKL (bench/NOTES.md).
pub fn gemm_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512cd")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The libraries `auto` tries where gemm has no AVX-512 kernels, in order, each by the names it
/// goes by: Debian's builds first, then whichever the system links by default.
const KNOWN: [(&str, &[&str]); 2] = [
    (
        "openblas",
        &[
            "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
            "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
            "libopenblas.so.0",
            "libopenblas.dylib",
        ],
    ),
    (
        "blis",
        &[
            "/usr/lib/x86_64-linux-gnu/blis-serial/libblis.so.4",
            "/usr/lib/aarch64-linux-gnu/blis-serial/libblis.so.4",
            "libblis.so.4",
            "libblis.dylib",
        ],
    ),
];

fn package(name: &str) -> &'static str {
    match name {
        "blis" => "libblis4-serial",
        _ => "libopenblas0-pthread",
    }
}

/// Loads a BLAS, sets it to one thread and reads its description.
fn load(path: &str) -> Result<Backend, String> {
    let c_path = CString::new(path).map_err(|_| format!("{path:?} is not a path"))?;
    // Safety: dlopen with a NUL-terminated path; the handle is kept for the process's life.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // Safety: dlerror returns a NUL-terminated message or null.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() { "cannot load".into() } else { unsafe { CStr::from_ptr(why) }.to_string_lossy() };
        return Err(format!("{why}"));
    }
    let symbol = |name: &str| -> *mut c_void {
        let name = CString::new(name).expect("a symbol name");
        // Safety: a valid handle and a NUL-terminated name.
        unsafe { libc::dlsym(handle, name.as_ptr()) }
    };
    let sgemm = symbol("cblas_sgemm");
    if sgemm.is_null() {
        return Err(format!("{path} has no cblas_sgemm"));
    }
    let text = |f: *mut c_void| -> Option<String> {
        // Safety: the symbols read here are `const char *f(void)` in OpenBLAS and BLIS.
        (!f.is_null()).then(|| {
            let f: unsafe extern "C" fn() -> *const c_char = unsafe { std::mem::transmute(f) };
            unsafe { CStr::from_ptr(f()) }.to_string_lossy().trim().to_owned()
        })
    };
    let openblas_threads = symbol("openblas_set_num_threads");
    let blis_threads = symbol("bli_thread_set_num_threads");
    // Safety: `void openblas_set_num_threads(int)` and `void bli_thread_set_num_threads(dim_t)`.
    unsafe {
        if !openblas_threads.is_null() {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int)>(openblas_threads)(1);
        }
        if !blis_threads.is_null() {
            std::mem::transmute::<*mut c_void, unsafe extern "C" fn(i64)>(blis_threads)(1);
        }
    }
    let name = if let Some(config) = text(symbol("openblas_get_config")) {
        if config.contains("SINGLE_THREADED") {
            return Err(format!(
                "{path} is OpenBLAS built single-threaded, whose concurrent calls race (the shards call it at once): use its threaded build (Debian: libopenblas0-pthread)"
            ));
        }
        config
    } else if let Some(version) = text(symbol("bli_info_get_version_str")) {
        let arch = symbol("bli_arch_query_id");
        let arch_name = symbol("bli_arch_string");
        let arch = (!arch.is_null() && !arch_name.is_null()).then(|| {
            // Safety: `arch_t bli_arch_query_id(void)`, `const char *bli_arch_string(arch_t)`.
            unsafe {
                let id = std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(arch)();
                let f = std::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int) -> *const c_char>(arch_name);
                CStr::from_ptr(f(id)).to_string_lossy().into_owned()
            }
        });
        format!("BLIS {version} {}", arch.unwrap_or_default()).trim().to_owned()
    } else {
        format!("cblas {path}")
    };
    // Safety: cblas_sgemm has the CBLAS signature.
    Ok(Backend { name: name.into(), sgemm: Some(unsafe { std::mem::transmute::<*mut c_void, Sgemm>(sgemm) }) })
}

/// dst (m × n) = lhs (m × k) · rhs (k × n), plus dst's values when `accumulate`; each matrix
/// given by its (row, column) strides in elements. With a BLAS, the layouts it takes (one unit
/// stride per matrix) go to it; any other goes to gemm. `threads` > 1 runs row blocks (BLAS) or
/// gemm's own split in parallel on the current rayon pool.
///
/// # Safety
/// The pointers and strides must describe valid matrices; dst must not overlap lhs or rhs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    shape: (usize, usize, usize),
    dst: *mut f32,
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    threads: usize,
) {
    let backend = backend().unwrap_or(&Backend::GEMM);
    sgemm_on(backend, shape, dst, dst_strides, accumulate, lhs, lhs_strides, rhs, rhs_strides, threads)
}

/// [`sgemm`] with a given backend (to compare them).
///
/// # Safety
/// As for [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_on(
    backend: &Backend,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    if let Some(blas) = backend.sgemm {
        // A column-major destination is the row-major transposed product: Cᵀ = Bᵀ Aᵀ.
        if let Some(call) = Call::new((m, n, k), (dst_rs, dst_cs), (lhs_rs, lhs_cs), (rhs_rs, rhs_cs))
            .or_else(|| Call::new((n, m, k), (dst_cs, dst_rs), (rhs_cs, rhs_rs), (lhs_cs, lhs_rs)).map(Call::swapped))
        {
            let (dst, lhs, rhs) = (Ptr(dst), Ptr(lhs as *mut f32), Ptr(rhs as *mut f32));
            let block = |first: usize| {
                let rows = ROW_BLOCK.min(call.m - first);
                let (a, b) = if call.swapped { (rhs, lhs) } else { (lhs, rhs) };
                let a_off = if call.lhs_trans == NO_TRANS { first * call.lda } else { first };
                // Safety: the caller's matrices; each block writes its own rows of dst.
                unsafe {
                    blas(
                        ROW_MAJOR,
                        call.lhs_trans,
                        call.rhs_trans,
                        rows as c_int,
                        call.n as c_int,
                        call.k as c_int,
                        1.0,
                        a.at(a_off),
                        call.lda as c_int,
                        b.at(0),
                        call.ldb as c_int,
                        if accumulate { 1.0 } else { 0.0 },
                        dst.at(first * call.ldc),
                        call.ldc as c_int,
                    )
                }
            };
            let firsts = (0..call.m).step_by(ROW_BLOCK);
            if threads > 1 && call.m > ROW_BLOCK {
                use rayon::prelude::*;
                firsts.collect::<Vec<_>>().into_par_iter().for_each(block);
            } else {
                firsts.for_each(block);
            }
            return;
        }
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}

/// A raw pointer the row blocks share (each writes only its own rows).
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// Safety: see `sgemm`: blocks read the operands and write disjoint rows of the destination.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

impl Ptr {
    /// The element `offset` past this one (a method, so closures capture the whole `Ptr`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A product in CBLAS's row-major terms: C (m × n, row stride ldc) = op(A) op(B).
#[derive(Clone, Copy)]
struct Call {
    m: usize,
    n: usize,
    k: usize,
    lhs_trans: c_int,
    lda: usize,
    rhs_trans: c_int,
    ldb: usize,
    ldc: usize,
    swapped: bool,
}

impl Call {
    /// The call for a row-major destination, if both operands have a unit stride.
    fn new(
        (m, n, k): (usize, usize, usize),
        (dst_rs, dst_cs): (usize, usize),
        (lhs_rs, lhs_cs): (usize, usize),
        (rhs_rs, rhs_cs): (usize, usize),
    ) -> Option<Self> {
        // A dimension of one makes its stride irrelevant: any unit-stride reading holds.
        // CBLAS counts in ints: larger products go to gemm.
        if [m, n, k, dst_rs, lhs_rs, lhs_cs, rhs_rs, rhs_cs].iter().any(|&d| d > c_int::MAX as usize) {
            return None;
        }
        let dst_cs = if n == 1 { 1 } else { dst_cs };
        if dst_cs != 1 || (m > 1 && dst_rs < n) {
            return None;
        }
        let ldc = if m == 1 { n } else { dst_rs };
        let (lhs_trans, lda) = operand((m, k), (lhs_rs, lhs_cs))?;
        let (rhs_trans, ldb) = operand((k, n), (rhs_rs, rhs_cs))?;
        Some(Self { m, n, k, lhs_trans, lda, rhs_trans, ldb, ldc, swapped: false })
    }

    fn swapped(self) -> Self {
        Self { swapped: true, ..self }
    }
}

/// An (r × c) operand with strides (rs, cs) as CBLAS's (transpose flag, leading dimension):
/// row-major (unit column stride), or column-major read as the transpose; else none.
fn operand((r, c): (usize, usize), (rs, cs): (usize, usize)) -> Option<(c_int, usize)> {
    if (c == 1 || cs == 1) && (r == 1 || rs >= c) {
        return Some((NO_TRANS, if r == 1 { c } else { rs }.max(1)));
    }
    if (r == 1 || rs == 1) && (c == 1 || cs >= r) {
        return Some((TRANS, if c == 1 { r } else { cs }.max(1)));
    }
    None
}
