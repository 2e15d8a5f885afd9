use tessera_data::mds::{MdsWriter, WriterOptions};
use tessera_data::stream::{StreamingConfig, StreamingDataset, World};
#[test]
fn tmp_perf() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = WriterOptions { size_limit: Some(4 << 20), ..Default::default() };
    let mut w = MdsWriter::create(tmp.path(), &[("tokens", "ndarray:int32")], opts).unwrap();
    let toks: Vec<u32> = (0..2048).collect();
    for _ in 0..20000 { w.write_tokens(&toks).unwrap(); }
    w.finish().unwrap();
    let mut c = StreamingConfig::local(tmp.path());
    c.shuffle = true; c.batch_size = 8;
    let t0 = std::time::Instant::now();
    let ds = StreamingDataset::new(c, World::SINGLE).unwrap();
    let mut l = ds.loader(ds.initial_state()).unwrap();
    eprintln!("plan {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let (mut t, mut n) = (Vec::new(), Vec::new());
    let mut total = 0usize;
    for _ in 0..2500 { t.clear(); n.clear(); l.next_batch_into(&mut t, &mut n).unwrap(); total += t.len(); }
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("{} tokens in {dt:.3}s = {:.1} Mtok/s", total, total as f64 / dt / 1e6);
}
