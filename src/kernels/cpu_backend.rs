//! taper's CPU backend: the kernels of `cpu/` (f32 and f64, hand-written backward passes) in
//! place of the composed ops they beat. A whole residual sub-layer (the FFN, or self-attention
//! with its projections, rotary positions, QK-norm, T5's learned bias and Shaw's tables) runs
//! as one node where its branch says what it is ([`BranchSpec`]) and its norms sit where a node
//! takes them; anything else keeps the composed recipe, over this backend's smaller ops.

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;

use super::adamw::{self, AdamParam, AdamStep, Count};
use super::residual::{self, AttentionSpec, Branch, BranchSpec, FfnSpec, NormRef, Product, Residual, Rotary};
use super::{composed, cpu, Activation, Backend, Mask, Mode};

/// taper's CPU kernels ([`super::backend_for`] picks it for f32 and f64 on the CPU).
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        cpu::linear(x, weight, bias)
    }

    fn linear_act(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        match (bias, act.elementwise()) {
            // One node for the product, the bias and GELU.
            (Some(bias), Activation::Gelu) => cpu::linear_gelu(x, weight, bias),
            _ => self.activate(&self.linear(x, weight, bias)?, act),
        }
    }

    fn activate(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        match act.elementwise() {
            Activation::Gelu => cpu::gelu(x),
            Activation::Relu => x.relu(),
            // candle's SiLU and tanh-GELU have their backward; on the CPU they are one node each.
            act => composed::activate(x, act),
        }
    }

    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        cpu::layer_norm(x, weight, bias, eps)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        cpu::rms_norm(x, weight, eps)
    }

    /// The backward sums `b`'s gradient in one pass instead of candle's strided reduction.
    fn add_broadcast(&self, x: &Tensor, b: &Tensor) -> Result<Tensor> {
        cpu::add_row_vector(x, b)
    }

    fn cross_entropy_sum(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        cpu::cross_entropy_sum(logits, targets)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        n_head: usize,
        mask: &Mask,
        p: f64,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        // A learned position bias needs its gradient, which this node does not compute (the
        // self-attention sub-layer node does).
        if mask.has_learned_bias() {
            return composed::attention(self, q, k, v, n_head, mask, p, mode);
        }
        let (b, t_q, _) = q.dims3()?;
        let dropout = mode.dropout_multipliers(b * n_head * t_q * k.dim(1)?, p);
        cpu::attention(q, k, v, n_head, mask.cpu_form()?.clone(), dropout)
    }

    fn residual(&self, x: &Tensor, residual: &Residual, branch: &mut dyn Branch, mode: &mut Mode) -> Result<Tensor> {
        if let Some(norm) = NodeNorm::of(residual) {
            let node = match branch.spec(x, mode)? {
                BranchSpec::Ffn(ffn) => ffn_node(x, &norm, ffn, residual.dropout, mode)?,
                BranchSpec::SelfAttention(attention) => {
                    self_attention_node(x, &norm, attention, residual.dropout, mode)?
                }
                BranchSpec::Opaque => None,
            };
            if let Some(out) = node {
                return Ok(out);
            }
        }
        residual::compose(self, x, residual, branch, mode)
    }

    /// One pass per gradient on the host when all are contiguous CPU f32 (chunks of a fixed
    /// size summed in order: the result does not depend on the thread count).
    fn global_norm(&self, grads: &[Option<Tensor>]) -> Result<Tensor> {
        match sum_of_squares(grads)? {
            Some(total) => Tensor::new(total.sqrt() as f32, &candle_core::Device::Cpu),
            None => composed::global_norm(grads),
        }
    }

    /// Two in-place passes per parameter (moments, then weights) where the parameters are CPU
    /// f32; a step's gate is read on the host once.
    fn adamw_step(&self, step: &AdamStep, params: &mut [AdamParam]) -> Result<()> {
        if !params.first().is_some_and(|p| p.var.device().is_cpu()) {
            return adamw::step(step, params);
        }
        let t = match &step.gate {
            None => step.steps as f64,
            Some((apply, count)) => match crate::host::cpu_vec1(apply)?[0] != 0.0 {
                true => crate::host::cpu_vec1(count)?[0] as f64,
                false => return Ok(()),
            },
        };
        for p in params.iter_mut() {
            match p.var.dtype() == candle_core::DType::F32 && p.var.is_contiguous() {
                true => cpu::adamw_in_place(p, step, t)?,
                false => adamw::update(p, step, &Count::Host(t))?,
            }
        }
        Ok(())
    }
}

/// The sum of squares of all gradients when they are contiguous f32 CPU tensors (None
/// otherwise): one pass over each, no temporary.
fn sum_of_squares(grads: &[Option<Tensor>]) -> Result<Option<f64>> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        if !g.device().is_cpu() || g.dtype() != candle_core::DType::F32 || !g.is_contiguous() {
            return Ok(None);
        }
        let (storage, layout) = g.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else { return Ok(None) };
        let values = cpu::contiguous::<f32>(storage, layout)?;
        let partials: Vec<f64> =
            values.par_chunks(cpu::PARALLEL_MIN).map(|chunk| cpu::lane_sum(chunk, |v| v * v) as f64).collect();
        total += partials.iter().sum::<f64>();
    }
    Ok(Some(total))
}

/// The CPU kernels' form of an elementwise activation, where they have one.
fn cpu_act(act: Activation) -> Option<cpu::Act> {
    match act {
        Activation::Gelu => Some(cpu::Act::Gelu),
        Activation::GeluTanh => Some(cpu::Act::GeluTanh),
        Activation::Relu => Some(cpu::Act::Relu),
        Activation::Silu => Some(cpu::Act::Silu),
        _ => None,
    }
}

/// A norm's parameters as the nodes pack them: [weight, bias] (LayerNorm) or [weight]
/// (RMSNorm), whether it is an RMSNorm, and its epsilon (None: the identity, or a norm the nodes
/// have no form of, which [`has_node_form`] tells apart).
fn norm_parts<'a>(norm: &NormRef<'a>) -> Option<(Vec<&'a Tensor>, bool, f64)> {
    match *norm {
        NormRef::Layer { weight, bias, eps } => Some((vec![weight, bias], false, eps)),
        NormRef::Rms { weight, eps } => Some((vec![weight], true, eps)),
        NormRef::Identity | NormRef::Other(_) => None,
    }
}

/// Whether the nodes take `norm` (the identity, LayerNorm, RMSNorm).
fn has_node_form(norm: &NormRef) -> bool {
    !matches!(norm, NormRef::Other(_))
}

/// A sub-layer's norms as a node takes them: one norm before the branch (pre-LN, with the
/// sandwich's second of the same kind on its output) or after the add (post-LN, with the
/// skip's multiplier alpha).
struct NodeNorm<'a> {
    parameters: Vec<&'a Tensor>,
    rms: bool,
    eps: f64,
    pre: bool,
    alpha: f64,
    /// The sandwich's second norm's parameters.
    branch_out: Option<Vec<&'a Tensor>>,
}

impl<'a> NodeNorm<'a> {
    /// The node's form of `residual`'s norms, where a node has one.
    fn of(residual: &Residual<'a>) -> Option<Self> {
        if ![residual.pre, residual.out, residual.post].iter().all(has_node_form) {
            return None;
        }
        let (pre, out, post) = (norm_parts(&residual.pre), norm_parts(&residual.out), norm_parts(&residual.post));
        match (pre, out, post) {
            (Some((parameters, rms, eps)), out, None) if residual.alpha == 1.0 => {
                let branch_out = match out {
                    None => None,
                    Some((out, out_rms, out_eps)) if out_rms == rms && out_eps == eps => Some(out),
                    Some(_) => return None,
                };
                Some(Self { parameters, rms, eps, pre: true, alpha: 1.0, branch_out })
            }
            (None, None, Some((parameters, rms, eps))) => {
                Some(Self { parameters, rms, eps, pre: false, alpha: residual.alpha, branch_out: None })
            }
            _ => None,
        }
    }

    /// The node's packed parameters: [norm | `first`] and [`second` | the sandwich's norm].
    fn pack(&self, first: &[&Tensor], second: &[&Tensor]) -> Result<(Tensor, Tensor)> {
        let mut second = second.to_vec();
        second.extend(self.branch_out.iter().flatten());
        cpu::pack_parameters(&self.parameters, first, &second)
    }

    /// Runs a sub-layer `node` with LayerNorm probing as the composed recipe does it: a
    /// pre-LN norm's input (x) is recorded before the node, a post-LN one's (the sum the node
    /// leaves in its probe) or the sandwich's second one's (the branch's output) after.
    fn probed(
        &self,
        x: &Tensor,
        mode: &mut Mode,
        node: impl FnOnce(cpu::SublayerNorm) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let sandwich = self.branch_out.is_some();
        let probe = (mode.is_probing() && (!self.pre || sandwich)).then(cpu::SumProbe::default);
        if self.pre {
            mode.record_norm_input(x)?;
        }
        let (pre_norm, rms, eps, alpha) = (self.pre, self.rms, self.eps, self.alpha);
        let out = node(cpu::SublayerNorm { pre_norm, rms, eps, alpha, sandwich, probe: probe.clone() })?;
        if let Some(sum) = probe.and_then(|p| p.lock().ok()?.take()) {
            mode.record_norm_input(&sum)?;
        }
        Ok(out)
    }
}

/// The flat parameter list [weights..., biases...] of products (biases only if all have one),
/// and whether they have biases; None when some have one and some not.
fn branch_parameters<'a>(products: &[&'a Product<'a>]) -> Option<(Vec<&'a Tensor>, bool)> {
    let biases: Vec<&Tensor> = products.iter().filter_map(|p| p.bias).collect();
    let with_bias = match biases.len() {
        0 => false,
        n if n == products.len() => true,
        _ => return None,
    };
    Some((products.iter().map(|p| &p.weight).chain(biases).collect(), with_bias))
}

/// The FFN sub-layer as one node (gated: [W_gate; W_1] stacked, one product for both input
/// projections); None where the node does not take it.
fn ffn_node(x: &Tensor, norm: &NodeNorm, ffn: FfnSpec, p: f64, mode: &mut Mode) -> Result<Option<Tensor>> {
    let FfnSpec { fc1, gate, fc2, act } = &ffn;
    let Some(cpu_act) = cpu_act(act.elementwise()) else { return Ok(None) };
    if gate.is_some() != act.gate().is_some() {
        return Ok(None);
    }
    let first = match gate {
        Some(gate) => branch_parameters(&[gate, fc1]),
        None => branch_parameters(&[fc1]),
    };
    let (Some((first, bias1)), Some((second, bias2))) = (first, branch_parameters(&[fc2])) else { return Ok(None) };
    if bias1 != bias2 {
        return Ok(None);
    }
    let (first, second) = norm.pack(&first, &second)?;
    let dropout = mode.dropout_multipliers(x.elem_count(), p);
    let shape = cpu::FfnShape { hidden: fc1.weight.dim(0)?, act: cpu_act, bias: bias1, gated: gate.is_some() };
    Ok(Some(norm.probed(x, mode, |norm| cpu::ffn_sublayer(x, (&first, &second), shape, norm, dropout))?))
}

fn rotation(rotary: &Rotary) -> Result<cpu::Rotation> {
    let values = crate::host::cpu_vec1;
    Ok(cpu::Rotation { cos: values(&rotary.cos)?, sin: values(&rotary.sin)? })
}

/// The self-attention sub-layer as one node: [norm | W_q | W_k | W_v | b_q b_k b_v | QK-norm's
/// query and key norms] and [W_o | b_o | T5's learned score bias | Shaw's key and value tables];
/// None where the node does not take it (a QK-norm it has no form of).
fn self_attention_node(
    x: &Tensor,
    norm: &NodeNorm,
    attention: AttentionSpec,
    p_out: f64,
    mode: &mut Mode,
) -> Result<Option<Tensor>> {
    let AttentionSpec {
        projections: [q, k, v, o],
        heads: (n_head, n_kv_head),
        rotary,
        qk_norm,
        relative,
        mask,
        dropout,
    } = attention;
    if qk_norm.iter().flatten().any(|n| !has_node_form(n)) {
        return Ok(None);
    }
    let every_bias_or_none = || candle_core::Error::Msg("a fused sub-layer needs every bias or none".into());
    let (mut first, bias1) = branch_parameters(&[&q, &k, &v]).ok_or_else(every_bias_or_none)?;
    let (mut second, bias2) = branch_parameters(&[&o]).ok_or_else(every_bias_or_none)?;
    // QK-norm's gains (and biases) end the first parameters: [query norm | key norm].
    let qk_norm = match qk_norm.as_ref().map(|[q, k]| (norm_parts(q), norm_parts(k))) {
        Some((Some((q, q_rms, q_eps)), Some((k, k_rms, k_eps)))) if q_rms == k_rms && q_eps == k_eps => {
            first.extend(q.into_iter().chain(k));
            Some(cpu::QkNorm { rms: q_rms, eps: q_eps })
        }
        Some(_) => candle_core::bail!("QK-norm's query and key norms differ in kind or epsilon"),
        None => None,
    };
    let (b, t, _) = x.dims3()?;
    // A learned score bias (T5's) rides at the end of the second parameters: the node returns
    // its gradient with theirs.
    let learned = mask.learned_bias().map(|bias| bias.to_dtype(x.dtype())).transpose()?;
    if let Some(bias) = &learned {
        if bias.dims() != [1, n_head, t, t] {
            candle_core::bail!(
                "self-attention: a score bias of shape {:?} for {n_head} heads over {t} positions",
                bias.dims()
            );
        }
        second.push(bias);
    }
    // Shaw's tables end them: [keys | values], (2 clip + 1, head_dim) each.
    let tables = relative
        .as_ref()
        .map(|r| Ok::<_, candle_core::Error>([r.keys.to_dtype(x.dtype())?, r.values.to_dtype(x.dtype())?]));
    let tables = tables.transpose()?;
    second.extend(tables.iter().flatten());
    // Drawn in the composed path's order: the weights' mask, then the output's.
    let weights_dropout = mode.dropout_multipliers(b * n_head * t * t, dropout);
    let residual_dropout = mode.dropout_multipliers(x.elem_count(), p_out);
    let (first, second) = norm.pack(&first, &second)?;
    let attention = (mask.cpu_form()?.clone(), weights_dropout, learned.is_some());
    let rotation = rotary.as_ref().map(rotation).transpose()?;
    let shaw_clip = relative.as_ref().map(|r| r.clip);
    let heads =
        cpu::SelfAttentionShape { heads: (n_head, n_kv_head), bias: (bias1, bias2), rotation, qk_norm, shaw_clip };
    let node = |norm| cpu::self_attention_sublayer(x, (&first, &second), heads, attention, norm, residual_dropout);
    Ok(Some(norm.probed(x, mode, node)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Composed, NormForward};
    use candle_core::Device;

    /// A norm the kernels have no form of.
    #[derive(Debug)]
    struct Halve;

    impl NormForward for Halve {
        fn forward(&self, x: &Tensor, _mode: &Mode) -> Result<Tensor> {
            x * 0.5
        }
    }

    /// An FFN branch of two products with biases, GELU between.
    struct Ffn([Tensor; 4]);

    impl Branch for Ffn {
        fn forward(&mut self, h: &Tensor, mode: &mut Mode) -> Result<Tensor> {
            let [w1, b1, w2, b2] = &self.0;
            let ops = mode.backend();
            ops.linear(&ops.linear_act(h, w1, Some(b1), Activation::Gelu)?, w2, Some(b2))
        }
        fn spec(&self, _x: &Tensor, _mode: &Mode) -> Result<BranchSpec<'_>> {
            let [w1, b1, w2, b2] = &self.0;
            let (fc1, fc2) =
                (Product { weight: w1.clone(), bias: Some(b1) }, Product { weight: w2.clone(), bias: Some(b2) });
            Ok(BranchSpec::Ffn(FfnSpec { fc1, gate: None, fc2, act: Activation::Gelu }))
        }
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.normal() as f32 * 0.5).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
    }

    /// The CPU backend's sub-layer (its node where the norms have a node form, the recipe over
    /// its own ops where one does not) equals the composed recipe's.
    #[test]
    fn the_cpu_sub_layer_equals_the_composed_recipe_with_any_norm() {
        let (d, ff) = (8, 16);
        let x = random(&[2, 3, d], 1);
        let ffn = || Ffn([random(&[ff, d], 2), random(&[ff], 3), random(&[d, ff], 4), random(&[d], 5)]);
        let (gain, bias) = (random(&[d], 6).affine(1.0, 1.0).unwrap(), random(&[d], 7));
        let layer = NormRef::Layer { weight: &gain, bias: &bias, eps: 1e-5 };
        let none = NormRef::Identity;
        let residual = |pre, post| Residual { pre, out: none, post, alpha: 1.0, dropout: 0.0 };
        let cases = [
            ("pre LayerNorm (node)", residual(layer, none)),
            ("post LayerNorm (node)", residual(none, layer)),
            ("pre, a norm the nodes lack", residual(NormRef::Other(&Halve), none)),
            ("post, a norm the nodes lack", residual(none, NormRef::Other(&Halve))),
        ];
        for (name, residual) in cases {
            let cpu = CpuBackend.residual(&x, &residual, &mut ffn(), &mut Mode::eval()).unwrap();
            let composed = Composed.residual(&x, &residual, &mut ffn(), &mut Mode::eval()).unwrap();
            let diff = (cpu - &composed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{name}: the CPU backend differs from the composed recipe by {diff}");
        }
    }
}
