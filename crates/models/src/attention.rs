//! The one attention function every model calls, so a faster or leaner backend (the sliced
//! attention kernel) can replace it in one place.

use tch::Tensor;

use crate::Result;

/// `softmax(q·kᵀ·scale + mask)·v` for `q` `[B, H, Sq, D]`, `k`/`v` `[B, H, Sk, D]`, an optional
/// additive `mask` broadcastable to `[B, H, Sq, Sk]`; `scale` defaults to `1/√D`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f64>,
) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(
        q, k, v, mask, 0.0, false, scale, false,
    )?)
}
