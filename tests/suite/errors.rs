//! Bad input through the Rust API is a clear error, never a panic or a silent wrong answer.

use masked_rnn::{
    ErrorKind, InitialState, KerasLstm, KerasLstmOptions, KerasOutputs, LstmWeights, MaskedSeq, Padding, SeqView,
    Sequential,
};

fn layer(i: usize, h: usize) -> KerasLstm {
    let w = LstmWeights::from_keras(i, h, &vec![0.1; i * 4 * h], &vec![0.1; h * 4 * h], None).unwrap();
    KerasLstm::new(w, KerasLstmOptions::default()).unwrap()
}

fn kind<T: std::fmt::Debug>(r: masked_rnn::Result<T>) -> ErrorKind {
    let e = r.expect_err("expected an error");
    assert!(!e.message().is_empty());
    e.kind()
}

#[test]
fn mismatched_lengths_are_shape_errors() {
    let l = layer(3, 4);
    let view = SeqView::from_lengths(&[2, 1], 3, Padding::Post).unwrap();
    let x = vec![0.5; 2 * 3 * 3];
    assert_eq!(kind(l.forward(&x[1..], &view, None, KerasOutputs::default(), 1)), ErrorKind::BadShape);
    let mut y = vec![0.0; 2 * 3 * 4 - 1];
    let out = KerasOutputs { y: Some(&mut y), ..Default::default() };
    assert_eq!(kind(l.forward(&x, &view, None, out, 1)), ErrorKind::BadShape);
    let mut h = vec![0.0; 7];
    let out = KerasOutputs { h_n: Some(&mut h), ..Default::default() };
    assert_eq!(kind(l.forward(&x, &view, None, out, 1)), ErrorKind::BadShape);
    let s = vec![0.0; 8];
    let init = InitialState { h: &s, c: &s[..7] };
    assert_eq!(kind(l.forward(&x, &view, Some(init), KerasOutputs::default(), 1)), ErrorKind::BadShape);
    // Nothing was written into the rejected buffer: still +0.0 everywhere, bit for bit.
    masked_rnn::fuzzing::same_bits("rejected y", &y, &vec![0.0; y.len()]).unwrap();
}

#[test]
fn lengths_past_time_and_bad_masks() {
    assert_eq!(kind(SeqView::from_lengths(&[4], 3, Padding::Pre)), ErrorKind::BadArgument);
    assert_eq!(kind(SeqView::from_i32_lengths(&[-2], 3, Padding::Post)), ErrorKind::BadArgument);
    assert_eq!(kind(SeqView::from_mask(&[true; 5], 2, 3)), ErrorKind::BadShape);
    assert_eq!(kind(SeqView::from_mask(&[], usize::MAX, 3)), ErrorKind::Overflow);
    assert_eq!(kind(SeqView::from_values(&[0.0; 5], 1, 2, 3, 0.0, Default::default())), ErrorKind::BadShape);
    let v = SeqView::full(2, 3);
    assert_eq!(kind(v.slice(2, 4)), ErrorKind::BadArgument);
    assert_eq!(kind(v.select_batch(1, 3)), ErrorKind::BadArgument);
}

#[test]
fn weights_and_sizes() {
    assert_eq!(kind(LstmWeights::from_keras(2, 0, &[], &[], None)), ErrorKind::BadArgument);
    assert_eq!(kind(LstmWeights::from_keras(usize::MAX / 2, 3, &[], &[], None)), ErrorKind::Overflow);
    assert_eq!(kind(LstmWeights::from_pytorch(2, 1, &[0.0; 8], &[0.0; 3], None, None)), ErrorKind::BadShape);
    assert_eq!(kind(LstmWeights::from_onnx(2, 1, &[0.0; 8], &[0.0; 4], Some(&[0.0; 4]), None)), ErrorKind::BadShape);
    assert_eq!(kind(LstmWeights::from_onnx(2, 1, &[0.0; 8], &[0.0; 4], None, Some(&[0.0; 2]))), ErrorKind::BadShape);
    assert_eq!(kind(MaskedSeq::dense(vec![0.0; 5], 2, 3, 1)), ErrorKind::BadShape);
}

#[test]
fn stack_checks_feature_sizes_and_slices() {
    let input = MaskedSeq::dense(vec![0.5; 2 * 4 * 3], 2, 4, 3).unwrap();
    let wrong = Sequential::new().lstm(layer(5, 2));
    assert_eq!(kind(wrong.forward(&input, 1)), ErrorKind::BadShape);
    let slice = Sequential::new().lstm(layer(3, 2)).time_slice(3, Some(6));
    assert_eq!(kind(slice.forward(&input, 1)), ErrorKind::BadArgument);
    let ok = Sequential::new().lstm(layer(3, 2)).time_slice(1, Some(3)).lstm(layer(2, 2));
    let (out, _) = ok.forward(&input, 1).unwrap();
    assert_eq!((out.batch(), out.time(), out.features()), (2, 2, 2));
}

#[test]
fn nan_and_infinite_inputs_at_valid_steps_propagate_not_panic() {
    let l = layer(2, 3);
    let view = SeqView::from_lengths(&[2, 2], 2, Padding::Post).unwrap();
    let x = [f32::NAN, 1.0, 0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, 1e38, -1e38];
    let (out, _) = l.forward_all(&x, &view, None, 2).unwrap();
    let reference = l.forward_reference(&x, &view, None).unwrap();
    masked_rnn::fuzzing::same_bits("fast vs reference y", &out.y, &reference.y).unwrap();
    assert!(out.y[..3].iter().all(|v| v.is_nan()));
}
