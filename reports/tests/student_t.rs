//! reports' statistics against SciPy (golden/student_t.json, made by golden/make_student_t.py).

use reports::statistics::{paired, student_t_cdf, student_t_quantile, welch};
use serde_json::Value;

fn golden() -> Value {
    serde_json::from_str(include_str!("golden/student_t.json")).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn the_t_distribution_matches_scipy() {
    let g = golden();
    for row in g["cdf"].as_array().unwrap() {
        let r = floats(row);
        let ours = student_t_cdf(r[0], r[1]);
        assert!((ours - r[2]).abs() < 1e-9, "cdf({}, {}) = {ours}, scipy {}", r[0], r[1], r[2]);
    }
    for row in g["quantile_975"].as_array().unwrap() {
        let r = floats(row);
        let ours = student_t_quantile(0.975, r[0]);
        assert!((ours - r[1]).abs() < 1e-7, "ppf(0.975, {}) = {ours}, scipy {}", r[0], r[1]);
    }
}

#[test]
fn welch_and_paired_tests_match_scipy() {
    let g = golden();
    let w = &g["welch"];
    let t = welch(&floats(&w["a"]), &floats(&w["b"])).unwrap();
    assert!((t.t - w["t"].as_f64().unwrap()).abs() < 1e-9);
    assert!((t.df - w["df"].as_f64().unwrap()).abs() < 1e-9);
    assert!((t.p - w["p"].as_f64().unwrap()).abs() < 1e-9);
    assert!(t.ci95.0 < t.difference && t.difference < t.ci95.1);
    let p = &g["paired"];
    let t = paired(&floats(&p["x"]), &floats(&p["y"])).unwrap();
    assert!((t.t - p["t"].as_f64().unwrap()).abs() < 1e-9);
    assert!((t.p - p["p"].as_f64().unwrap()).abs() < 1e-9);
}
