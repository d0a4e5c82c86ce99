//! The backward of the Keras `GRU` (both reset placements) and `SimpleRNN` layers against Keras 3's own
//! `GradientTape` gradients computed in float64 (`tools/fixtures/keras_gru_rnn_golden.py`): masks with
//! holes, pre-padding, fully masked samples, go_backwards, zero_output_for_mask, initial states,
//! hard_sigmoid in both flavours, every upstream (`dy`, `d_last_output`, `d_h_n`); on 1 and 2 threads
//! (bitwise the same), valid steps only.

use crate::common::{fixtures, floats, mask, opt_floats, usize_of};
use masked_rnn::{
    Activation, ForwardStats, GruWeights, HardSigmoidFlavor, KerasGrads, KerasGru, KerasGruOptions, KerasOutputs,
    KerasRnnOptions, KerasSimpleRnn, KerasTape, KerasUpstream, RnnWeights, SeqView, Workspace,
};
use serde_json::Value;

/// Tolerance of float32 gradients against Keras' float64 ones: `|g - e| <= TOL * max(1, |e|)`.
const TOL: f32 = 1e-4;

enum Layer {
    Gru(Box<KerasGru>),
    Rnn(Box<KerasSimpleRnn>),
}

impl Layer {
    fn from_fixture(f: &Value) -> Layer {
        let (i, h) = (usize_of(&f["input"]), usize_of(&f["hidden"]));
        let flavor = match f["hard_sigmoid_flavor"].as_str() {
            Some("keras2") => HardSigmoidFlavor::Keras2,
            _ => HardSigmoidFlavor::Keras3,
        };
        let act = |k: &str| Activation::from_keras_name(f[k].as_str().expect("name"), flavor).expect("activation");
        let (k, r, bias) = (floats(&f["kernel"]), floats(&f["recurrent_kernel"]), opt_floats(&f["bias"]));
        let (back, zero) = (f["go_backwards"].as_bool().unwrap(), f["zero_output_for_mask"].as_bool().unwrap());
        if f["kind"] == "keras_gru_grad" {
            let reset_after = f["reset_after"].as_bool().unwrap();
            let w = GruWeights::from_keras(i, h, &k, &r, bias.as_deref(), reset_after).unwrap();
            let options = KerasGruOptions::default()
                .reset_after(reset_after)
                .activation(act("activation"))
                .recurrent_activation(act("recurrent_activation"))
                .go_backwards(back)
                .zero_output_for_mask(zero);
            Layer::Gru(Box::new(KerasGru::new(w, options).unwrap()))
        } else {
            let w = RnnWeights::from_keras(i, h, &k, &r, bias.as_deref()).unwrap();
            let options =
                KerasRnnOptions::default().activation(act("activation")).go_backwards(back).zero_output_for_mask(zero);
            Layer::Rnn(Box::new(KerasSimpleRnn::new(w, options).unwrap()))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn train(
        &self,
        x: &[f32],
        view: &SeqView,
        h0: Option<&[f32]>,
        up: KerasUpstream<'_>,
        grads: KerasGrads<'_>,
        threads: usize,
    ) -> (ForwardStats, ForwardStats) {
        let mut tape = KerasTape::new();
        let ws = &mut Workspace::new();
        let out = KerasOutputs::default();
        match self {
            Layer::Gru(l) => (
                l.forward_train(x, view, h0, out, &mut tape, threads, ws).unwrap(),
                l.backward(x, view, h0, &tape, up, grads, threads).unwrap(),
            ),
            Layer::Rnn(l) => (
                l.forward_train(x, view, h0, out, &mut tape, threads, ws).unwrap(),
                l.backward(x, view, h0, &tape, up, grads, threads).unwrap(),
            ),
        }
    }
}

fn some(v: &mut [f32]) -> Option<&mut [f32]> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (&g, &e)) in got.iter().zip(want).enumerate() {
        assert!((g - e).abs() <= TOL * e.abs().max(1.0), "{what}[{k}]: got {g}, Keras {e}");
    }
}

/// Every gradient fixture of `dir`; returns the gradient values compared.
fn grad_fixtures_match(dir: &str, kind: &str) -> usize {
    let mut compared = 0;
    for (name, f) in fixtures(dir, kind) {
        let layer = Layer::from_fixture(&f);
        let (b, t, i, h) = (usize_of(&f["batch"]), usize_of(&f["time"]), usize_of(&f["input"]), usize_of(&f["hidden"]));
        let view = SeqView::from_mask(&mask(&f["mask"]), b, t).unwrap();
        let (x, h0) = (floats(&f["x"]), opt_floats(&f["initial_h"]));
        let (dy, dl, dhn) = (opt_floats(&f["dy"]), opt_floats(&f["d_last_output"]), opt_floats(&f["d_h_n"]));
        let up = KerasUpstream { dy: dy.as_deref(), d_last_output: dl.as_deref(), d_h_n: dhn.as_deref(), d_c_n: None };
        let want: Vec<(&str, Vec<f32>)> = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "d_initial_h"]
            .iter()
            .filter_map(|k| opt_floats(&f[*k]).map(|v| (*k, v)))
            .collect();
        let mut runs = Vec::new();
        for threads in [1, 2] {
            let n = |k: &str| want.iter().find(|(w, _)| *w == k).map_or(0, |(_, v)| v.len());
            let mut g: Vec<Vec<f32>> = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "d_initial_h"]
                .iter()
                .map(|k| vec![0.0; n(k)])
                .collect();
            let [dx, dk, dr, db, dh0] = &mut g[..] else { unreachable!() };
            let grads = KerasGrads {
                dx: some(dx),
                d_kernel: some(dk),
                d_recurrent_kernel: some(dr),
                d_bias: some(db),
                d_initial_h: if h0.is_some() { some(dh0) } else { None },
                d_initial_c: None,
            };
            let (fwd, bwd) = layer.train(&x, &view, h0.as_deref(), up, grads, threads);
            assert_eq!((fwd.steps_computed, bwd.steps_computed), (view.total_valid(), view.total_valid()), "{name}");
            runs.push(g);
        }
        let bits = |g: &Vec<Vec<f32>>| g.iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&runs[0]), bits(&runs[1]), "{name}: 1 and 2 threads");
        let names = ["dx", "d_kernel", "d_recurrent_kernel", "d_bias", "d_initial_h"];
        for (k, got) in names.iter().zip(&runs[0]) {
            if let Some((_, want)) = want.iter().find(|(w, _)| w == k) {
                close(&format!("{name} {k}"), got, want);
                compared += want.len();
            }
        }
        assert_eq!(runs[0][0].len(), b * t * i, "{name}: dx compared");
        assert!(runs[0][1].len() >= i * h, "{name}: d_kernel compared");
    }
    compared
}

#[test]
fn gru_gradients_match_keras() {
    assert!(grad_fixtures_match("keras_gru", "keras_gru_grad") > 1000);
}

#[test]
fn simple_rnn_gradients_match_keras() {
    assert!(grad_fixtures_match("keras_rnn", "keras_rnn_grad") > 500);
}
