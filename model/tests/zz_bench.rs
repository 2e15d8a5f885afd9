mod common;
use burn::prelude::*;
use burn::tensor::Distribution;
use common::*;
use std::time::Instant;

fn time<F: FnMut()>(label: &str, mut f: F) {
    f();
    let t0 = Instant::now();
    for _ in 0..5 { f(); }
    eprintln!("{label}: {:?}", t0.elapsed() / 5);
}

#[test]
#[ignore]
fn bench() {
    let dev = Default::default();
    let (b, s, d, h) = (8usize, 256usize, 256usize, 8usize);
    let hd = d / h;
    let x = Tensor::<B, 2>::random([b * s, d], Distribution::Normal(0.0, 1.0), &dev);
    let w = Tensor::<B, 2>::random([4 * d, d], Distribution::Normal(0.0, 0.05), &dev);
    let wt = w.clone().transpose();
    let wc = Tensor::<B, 2>::from_data(wt.to_data(), &dev);
    time("linear x@W^T (view)", || { let _ = x.clone().matmul(wt.clone()).into_data(); });
    time("linear x@Wc (contig)", || { let _ = x.clone().matmul(wc.clone()).into_data(); });
    let q = Tensor::<B, 4>::random([b, h, s, hd], Distribution::Normal(0.0, 1.0), &dev);
    let k = q.clone();
    time("scores q@k^T", || { let _ = q.clone().matmul(k.clone().swap_dims(2, 3)).into_data(); });
    let sc = q.clone().matmul(k.clone().swap_dims(2, 3));
    time("softmax", || { let _ = burn::tensor::activation::softmax(sc.clone(), 3).into_data(); });
    let bias = Tensor::<B, 4>::random([1, h, s, s], Distribution::Normal(0.0, 1.0), &dev);
    time("add bias", || { let _ = (sc.clone() + bias.clone()).into_data(); });
    time("probs@v", || { let _ = sc.clone().matmul(k.clone()).into_data(); });
    let xs = x.clone().reshape([b, s, d]);
    time("swap+reshape copy", || { let _ = q.clone().swap_dims(1, 2).reshape([b, s, d]).into_data(); });
    let nw = Tensor::<B, 1>::ones([d], &dev);
    time("layernorm composed", || {
        let c = xs.clone() - xs.clone().mean_dim(2);
        let v = c.clone().square().mean_dim(2);
        let _ = (c * (v + 1e-5).sqrt().recip() * nw.clone().unsqueeze::<3>()).into_data();
    });
    let big = Tensor::<B, 2>::random([b * s, 4 * d], Distribution::Normal(0.0, 1.0), &dev);
    time("gelu", || { let _ = burn::tensor::activation::gelu(big.clone()).into_data(); });
    let logits = Tensor::<B, 2>::random([b * s, 8192], Distribution::Normal(0.0, 1.0), &dev);
    time("log_softmax vocab", || { let _ = burn::tensor::activation::log_softmax(logits.clone(), 1).into_data(); });
    let wte = Tensor::<B, 2>::random([8192, d], Distribution::Normal(0.0, 1.0), &dev);
    time("unembed x@wte^T", || { let _ = x.clone().matmul(wte.clone().transpose()).into_data(); });
}
