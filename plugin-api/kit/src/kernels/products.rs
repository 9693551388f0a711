//! Tests of the matrix-product backends (`candle_core::lmhost::matmul`): every backend this
//! machine has computes, in every layout the kernels and candle's matmul pass, what a plain
//! f64 triple loop does, and the same numbers whatever the thread count.

use candle_core::lmhost::matmul::{choose, found as backends, gemm_has_avx512, sgemm_on, Backend, ROW_BLOCK};

use super::testing::values;

/// Strides of an (r × c) matrix: row-major, column-major, or row-major with padded rows.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Rows,
    Columns,
    Padded,
    /// Neither stride 1: only gemm takes it (the BLAS call falls back).
    Strided,
}

impl Layout {
    fn strides(self, (r, c): (usize, usize)) -> (usize, usize) {
        match self {
            Layout::Rows => (c, 1),
            Layout::Columns => (1, r),
            Layout::Padded => (c + 3, 1),
            Layout::Strided => (2 * c, 2),
        }
    }

    fn len(self, (r, c): (usize, usize)) -> usize {
        let (rs, cs) = self.strides((r, c));
        if r == 0 || c == 0 {
            return 0;
        }
        (r - 1) * rs + (c - 1) * cs + 1
    }
}

struct Case {
    shape: (usize, usize, usize),
    layouts: [Layout; 3],
    accumulate: bool,
}

/// dst after the product, computed by `backend` with `threads`.
fn product(backend: &Backend, case: &Case, threads: usize) -> Vec<f32> {
    let (m, n, k) = case.shape;
    let [dst_l, lhs_l, rhs_l] = case.layouts;
    let lhs = values(lhs_l.len((m, k)), 1, 1.0);
    let rhs = values(rhs_l.len((k, n)), 2, 1.0);
    let mut dst = values(dst_l.len((m, n)), 3, 1.0);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    // Safety: each buffer holds every element its shape and strides reach.
    pool.install(|| unsafe {
        sgemm_on(
            backend,
            case.shape,
            dst.as_mut_ptr(),
            dst_l.strides((m, n)),
            case.accumulate,
            lhs.as_ptr(),
            lhs_l.strides((m, k)),
            rhs.as_ptr(),
            rhs_l.strides((k, n)),
            threads,
        )
    });
    dst
}

/// The same product in f64, element by element.
fn reference(case: &Case) -> Vec<f64> {
    let (m, n, k) = case.shape;
    let [dst_l, lhs_l, rhs_l] = case.layouts;
    let lhs = values(lhs_l.len((m, k)), 1, 1.0);
    let rhs = values(rhs_l.len((k, n)), 2, 1.0);
    let mut dst: Vec<f64> = values(dst_l.len((m, n)), 3, 1.0).into_iter().map(f64::from).collect();
    let ((ds_r, ds_c), (ls_r, ls_c), (rs_r, rs_c)) =
        (dst_l.strides((m, n)), lhs_l.strides((m, k)), rhs_l.strides((k, n)));
    for i in 0..m {
        for j in 0..n {
            let sum: f64 = (0..k)
                .map(|p| f64::from(lhs[i * ls_r + p * ls_c]) * f64::from(rhs[p * rs_r + j * rs_c]))
                .sum();
            let d = &mut dst[i * ds_r + j * ds_c];
            *d = if case.accumulate { *d + sum } else { sum };
        }
    }
    dst
}

fn cases() -> Vec<Case> {
    use Layout::*;
    let mut all = Vec::new();
    let shapes = [(1, 1, 1), (1, 9, 5), (9, 1, 5), (37, 23, 19), (ROW_BLOCK + 45, 30, 17), (4, 6, 0)];
    for shape in shapes {
        for dst in [Rows, Columns, Padded] {
            for lhs in [Rows, Columns, Padded, Strided] {
                for rhs in [Rows, Columns, Padded, Strided] {
                    for accumulate in [false, true] {
                        all.push(Case { shape, layouts: [dst, lhs, rhs], accumulate });
                    }
                }
            }
        }
    }
    all
}

#[test]
fn every_backend_computes_the_reference_product_in_every_layout() {
    let backends = backends();
    assert!(backends.iter().any(|b| b.name == "gemm"));
    for backend in &backends {
        for case in cases() {
            let (m, n, _) = case.shape;
            let want = reference(&case);
            let got = product(backend, &case, 1);
            // Only the destination's elements are compared: padding between rows is not written.
            let (rs, cs) = case.layouts[0].strides((m, n));
            for i in 0..m {
                for j in 0..n {
                    let (g, w) = (got[i * rs + j * cs], want[i * rs + j * cs]);
                    assert!(
                        (f64::from(g) - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "{}: {:?} {:?} accumulate={}: ({i}, {j}) is {g}, not {w}",
                        backend.name,
                        case.shape,
                        case.layouts,
                        case.accumulate
                    );
                }
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    use Layout::*;
    for backend in &backends() {
        for layouts in [[Rows, Rows, Columns], [Columns, Rows, Rows]] {
            let case = Case { shape: (3 * ROW_BLOCK + 7, 48, 40), layouts, accumulate: false };
            let one = product(backend, &case, 1);
            let two = product(backend, &case, 2);
            assert!(
                one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: {layouts:?}",
                backend.name
            );
        }
    }
}

/// The shards call the backend from two threads at once: each thread's results must be those
/// of the same product computed alone (a BLAS without locks races here).
#[test]
fn concurrent_products_equal_the_product_alone() {
    use Layout::*;
    for backend in &backends() {
        let cases = [
            Case { shape: (300, 150, 200), layouts: [Rows, Rows, Rows], accumulate: false },
            Case { shape: (128, 96, 64), layouts: [Rows, Rows, Columns], accumulate: false },
        ];
        let alone: Vec<Vec<f32>> = cases.iter().map(|c| product(backend, c, 1)).collect();
        for _round in 0..10 {
            std::thread::scope(|s| {
                for (case, alone) in cases.iter().zip(&alone) {
                    s.spawn(move || {
                        for _ in 0..10 {
                            let got = product(backend, case, 1);
                            assert!(
                                got.iter().zip(alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{}",
                                backend.name
                            );
                        }
                    });
                }
            });
        }
    }
}

#[test]
fn a_single_threaded_openblas_is_refused() {
    for path in ["/usr/lib/x86_64-linux-gnu/openblas-serial/libopenblas.so.0"] {
        if std::path::Path::new(path).exists() {
            let refused = choose(path).err().expect("refused");
            assert!(refused.contains("libopenblas0-pthread"), "{refused}");
        }
    }
}

#[test]
fn an_unknown_or_missing_backend_is_refused_by_name() {
    let unknown = choose("mkl").err().expect("refused");
    assert!(unknown.contains("LMHOST_BLAS=mkl") && unknown.contains("gemm"), "{unknown}");
    let missing = choose("/nonexistent/libblas.so").err().expect("refused");
    assert!(missing.contains("/nonexistent/libblas.so"), "{missing}");
}

#[test]
fn auto_keeps_gemm_where_the_cpu_has_avx512_and_else_takes_the_first_blas_found() {
    let first_blas = backends().into_iter().nth(1).map_or(Backend::GEMM.name, |b| b.name);
    let expected = if gemm_has_avx512() { Backend::GEMM.name } else { first_blas };
    assert_eq!(choose("auto").expect("auto always chooses").name, expected);
}
