//! The residual sub-layer as one op of the seam: a branch f (self-attention, cross-attention,
//! the FFN) wrapped in its skip connection with its norms, in any order, as litgpt's `Block`
//! draws it, `Identity` standing in for a missing norm:
//!
//! ```text
//!          x ──────────────┐
//!          ↓               │
//!          pre             │   pre-LN:   pre = LN,  out = post = Identity    x + f(LN(x))
//!          ↓               │   post-LN:  post = LN, pre = out = Identity     LN(x + f(x))
//!          f               │   sandwich: pre = LN,  out = LN', post = Id.    x + LN'(f(LN(x)))
//!          ↓               │   DeepNorm: post = LN, alpha > 1                LN(alpha x + f(x))
//!          out             │
//!          ↓               │
//!          dropout         │
//!          ↓               ↓
//!          + ◄──── alpha · x
//!          ↓
//!          post
//! ```
//!
//! The model describes a sub-layer ([`Residual`], its norms as [`NormRef`]s) and its branch (a
//! [`Branch`]: its forward from the layers' ops, and what it is, [`BranchSpec`], for a backend
//! that runs whole sub-layers as one node). [`compose`] is the default: the recipe above.

use candle_core::{Result, Tensor};

use super::composed::RelativeTables;
use super::mask::Mask;
use super::{dropout, Activation, Backend, Mode};

/// A norm as a sub-layer applies it: LayerNorm (gain and bias), RMSNorm (gain), none, or one
/// the kernels have no form of, which runs its own forward ([`NormForward`]).
#[derive(Debug, Clone, Copy)]
pub enum NormRef<'a> {
    Identity,
    Layer { weight: &'a Tensor, bias: &'a Tensor, eps: f64 },
    Rms { weight: &'a Tensor, eps: f64 },
    Other(&'a dyn NormForward),
}

/// A norm the kernels have no form of (one a model adds): its forward, over the forward's
/// backend's ops. A backend that fuses sub-layers runs a sub-layer with one composed.
pub trait NormForward: Sync + std::fmt::Debug {
    fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor>;
}

impl NormRef<'_> {
    /// The norm of `x` over its last dimension, by `ops`.
    pub fn apply<B: Backend + ?Sized>(&self, ops: &B, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        match *self {
            NormRef::Identity => Ok(x.clone()),
            NormRef::Layer { weight, bias, eps } => ops.layer_norm(x, weight, bias, eps),
            NormRef::Rms { weight, eps } => ops.rms_norm(x, weight, eps),
            NormRef::Other(norm) => norm.forward(x, mode),
        }
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, NormRef::Identity)
    }
}

/// One residual sub-layer: y = post(alpha x + dropout(out(f(pre(x))))) (see the module).
#[derive(Debug, Clone, Copy)]
pub struct Residual<'a> {
    /// The norm of the branch's input (pre-LN, sandwich).
    pub pre: NormRef<'a>,
    /// The norm of the branch's output (sandwich's second norm).
    pub out: NormRef<'a>,
    /// The norm of the sum (post-LN, DeepNorm).
    pub post: NormRef<'a>,
    /// The skip connection's multiplier (DeepNorm's alpha; 1 otherwise).
    pub alpha: f64,
    /// Dropout on the branch's output, before the add.
    pub dropout: f64,
}

/// The f of a sub-layer.
pub trait Branch {
    /// f(h), from the layers' ops: what every backend can run.
    fn forward(&mut self, h: &Tensor, mode: &mut Mode) -> Result<Tensor>;

    /// What f is on the sub-layer's input `x`, for a backend that runs a whole sub-layer as one
    /// node: its parameters as plain products, or `Opaque` where it is not one of the kinds such
    /// a node has (cross-attention, decoding with a KV-cache, a LoRA adapter training under
    /// dropout: two products).
    fn spec(&self, _x: &Tensor, _mode: &Mode) -> Result<BranchSpec<'_>> {
        Ok(BranchSpec::Opaque)
    }
}

/// What a branch is, for the backends that fuse sub-layers.
pub enum BranchSpec<'a> {
    /// Only its forward says.
    Opaque,
    /// The position-wise FFN.
    Ffn(FfnSpec<'a>),
    /// Self-attention over the sub-layer's own input, without a cache.
    SelfAttention(AttentionSpec<'a>),
}

/// A linear layer applied as one product: W (with a LoRA adapter merged in: a graph node over
/// the adapter, so its gradient reaches it) and b.
pub struct Product<'a> {
    pub weight: Tensor,
    pub bias: Option<&'a Tensor>,
}

/// FFN(h) = fc2(act(fc1(h))), or gated: fc2(act(gate(h)) * fc1(h)).
pub struct FfnSpec<'a> {
    pub fc1: Product<'a>,
    pub gate: Option<Product<'a>>,
    pub fc2: Product<'a>,
    pub act: Activation,
}

/// Rotary positions for the queries and keys of one input: cos and sin, (T, head_dim / 2), at
/// the input's positions.
pub struct Rotary {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Self-attention: the query, key, value and output products (the key and value ones `heads.1`
/// heads wide), (query heads, key/value heads), rotary positions, QK-norm's norms of the queries
/// and of the keys, Shaw's relative tables, the mask (with its score bias), and dropout on the
/// attention weights.
pub struct AttentionSpec<'a> {
    pub projections: [Product<'a>; 4],
    pub heads: (usize, usize),
    pub rotary: Option<Rotary>,
    pub qk_norm: Option<[NormRef<'a>; 2]>,
    pub relative: Option<RelativeTables<'a>>,
    pub mask: &'a Mask<'a>,
    pub dropout: f64,
}

/// The recipe, composed from `ops`: y = post(alpha x + dropout(out(f(pre(x))))), each norm's
/// input recorded for LayerNorm probing (diagnostics) in the order they run.
pub fn compose<B: Backend + ?Sized>(
    ops: &B,
    x: &Tensor,
    residual: &Residual,
    branch: &mut dyn Branch,
    mode: &mut Mode,
) -> Result<Tensor> {
    let normed = |norm: &NormRef, input: &Tensor, mode: &mut Mode| -> Result<Tensor> {
        if !norm.is_identity() {
            mode.record_norm_input(input)?;
        }
        norm.apply(ops, input, mode)
    };
    let h = normed(&residual.pre, x, mode)?;
    let out = branch.forward(&h, mode)?;
    let out = normed(&residual.out, &out, mode)?;
    let skip = if residual.alpha == 1.0 { x.clone() } else { (x * residual.alpha)? };
    let sum = (skip + dropout(&out, residual.dropout, mode)?)?;
    normed(&residual.post, &sum, mode)
}
