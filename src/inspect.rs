//! `taper inspect-init`: gradient norms by layer at initialisation, for pre-LN and post-LN at
//! several depths, on one batch: the measurement Xiong et al. (2020) use to explain why
//! post-LN needs warmup (its last layers' gradients do not shrink with depth; pre-LN's fall
//! like 1/sqrt(L)).

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Var};

use crate::config::{Config, NormPlacement};
use crate::data::{BatchBuffers, Corpus};
use crate::model::{Gpt, Mode, ParamStore};
use crate::plot::{Chart, Series, PALETTE};
use crate::train::diagnostics::grad_norms;

#[derive(Debug, Clone)]
pub struct InitProfile {
    pub norm: NormPlacement,
    pub depth: usize,
    /// Gradient norm of each block's parameters, and of its FFN alone, from block 0 up.
    pub block_grad_norms: Vec<f64>,
    pub ffn_grad_norms: Vec<f64>,
}

/// Builds the config's model at each depth and placement and measures one batch.
pub fn inspect_init(config: &Config, depths: &[usize]) -> Result<Vec<InitProfile>> {
    let device = crate::device::open_device(&config.train.device)?;
    let corpus = Corpus::resolve(&config.data)?;
    let tokenizer = crate::data::corpus_tokenizer(&config.tokenizer, &config.data, &corpus)?;
    let (data, _) = crate::data::corpus_dataset(&config.data, &corpus, &tokenizer, config.model.block_size)?;
    let mut buffers = BatchBuffers::default();
    let (inputs, targets) =
        data.train_batch(config.train.seed, 0, 0, config.train.batch_size, &device, &mut buffers)?;
    let tokens = inputs.elem_count() as f64;
    let mut profiles = Vec::new();
    for norm in [NormPlacement::Pre, NormPlacement::Post] {
        for &depth in depths {
            let mut cfg = config.model.clone();
            cfg.norm = norm;
            cfg.n_layer = depth;
            let params = ParamStore::new();
            let model = Gpt::new(
                &cfg,
                crate::train::causal_lm::decoder_vocab(&cfg, &tokenizer)?,
                DType::F32,
                params.var_builder(config.train.seed, &device),
            )?;
            let loss = (model.loss_sum(&inputs, &targets, &mut Mode::eval())? / tokens)?;
            let store = loss.backward()?;
            let named: Vec<(String, Var)> = params.named_vars();
            let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
            let grads: Vec<_> = named.iter().map(|(_, v)| store.get(v.as_tensor()).cloned()).collect();
            let norms = grad_norms(&names, &grads, None)?;
            let get = |key: String| norms.get(&key).copied().unwrap_or(0.0);
            profiles.push(InitProfile {
                norm,
                depth,
                block_grad_norms: (0..depth).map(|i| get(format!("blocks.{i}"))).collect(),
                ffn_grad_norms: (0..depth).map(|i| get(format!("blocks.{i}.mlp"))).collect(),
            });
        }
    }
    Ok(profiles)
}

pub fn markdown(profiles: &[InitProfile]) -> String {
    let mut out = String::from(
        "| placement | depth | FFN grad norm, first block | FFN grad norm, last block | last / first | block grad norm, last block |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for p in profiles {
        let (first, last) = (p.ffn_grad_norms[0], *p.ffn_grad_norms.last().unwrap_or(&0.0));
        out.push_str(&format!(
            "| {:?}-LN | {} | {first:.3e} | {last:.3e} | {:.2} | {:.3e} |\n",
            p.norm,
            p.depth,
            last / first.max(1e-30),
            p.block_grad_norms.last().unwrap_or(&0.0)
        ));
    }
    out
}

/// Writes `inspect-init.svg` (FFN gradient norm by block) and `inspect-init.md` into `out`.
pub fn write_report(profiles: &[InitProfile], out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut chart = Chart {
        title: "FFN gradient norm by block at initialisation".into(),
        x_label: "block (0 = nearest the input)".into(),
        y_label: "grad norm".into(),
        log_y: true,
        series: Vec::new(),
    };
    let depths: Vec<usize> = {
        let mut d: Vec<usize> = profiles.iter().map(|p| p.depth).collect();
        d.dedup();
        d.sort();
        d.dedup();
        d
    };
    for p in profiles {
        let color = PALETTE[depths.iter().position(|&d| d == p.depth).unwrap_or(0) % PALETTE.len()];
        let points = p.ffn_grad_norms.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect();
        let series = Series::new(Some(format!("{:?}-LN, {} layers", p.norm, p.depth)), color, points);
        chart.series.push(if p.norm == NormPlacement::Post { series.dashed() } else { series });
    }
    chart.save(&out.join("inspect-init.svg"))?;
    let md =
        format!("# Gradient norms at initialisation\n\n{}\n![inspect-init](inspect-init.svg)\n", markdown(profiles));
    crate::fsutil::write_atomic(&out.join("inspect-init.md"), md.as_bytes())
}
