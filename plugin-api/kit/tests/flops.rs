//! FLOPs counted from the matrix products a model runs, against the closed form for the
//! baseline: 6·N + 12·L·C·T per token, N the matrices' parameters (the head included, the
//! embedding tables not: they are looked up), attention's q kᵀ and weights·v un-halved
//! (PaLM, appendix B).

use lmhost_kit::testing;
use lmhost_kit::Baseline;

#[test]
fn the_baseline_counts_its_closed_form_in_both_archs() {
    for arch in ["gpt2", "llama"] {
        let t = testing::trainer::<Baseline>(&format!(r#"{{"arch": "{arch}"}}"#), 0);
        let matrices: usize = t
            .params
            .params()
            .iter()
            .filter(|p| p.var.rank() == 2 && !p.name.contains("wte") && !p.name.contains("wpe"))
            .map(|p| p.elem_count())
            .sum();
        let (layers, width, context) = (2.0, 32.0, testing::CONTEXT as f64);
        let closed = 6.0 * matrices as f64 + 12.0 * layers * width * context;
        let counted = t.flops_per_token().unwrap();
        assert_eq!(counted, closed, "{arch}: counted {counted}, closed form {closed}");
    }
}
