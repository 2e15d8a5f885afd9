//! Write token samples as MDS shards (mosaicml-streaming's format), then stream them back
//! shuffled, as two ranks would each see their half.
//!
//! `cargo run --example mds -- OUT_DIR`

use tessera::data::mds::{MdsWriter, WriterOptions};
use tessera::data::stream::{StreamingConfig, StreamingDataset, World};

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mds-example".into());
    // 100 samples of 16 tokens each, in shards of at most 1 KiB.
    let options = WriterOptions {
        size_limit: Some(1024),
        overwrite: true,
        ..WriterOptions::default()
    };
    let mut writer = MdsWriter::create(&out, &[("tokens", "ndarray:int32")], options)?;
    for i in 0..100u32 {
        let tokens: Vec<u32> = (0..16).map(|j| i * 16 + j).collect();
        writer.write_tokens(&tokens)?;
    }
    let index = writer.finish()?;
    println!("wrote {} shards to {out}", index.shards.len());

    for rank in 0..2 {
        let config = StreamingConfig {
            shuffle: true,
            ..StreamingConfig::local(&out)
        };
        let dataset = StreamingDataset::new(config, World::new(rank, 2, 2)?)?;
        let ids = dataset.rank_samples(&dataset.initial_state())?;
        let mut tokens = Vec::new();
        dataset.tokens(ids[0] as u64, &mut tokens)?;
        println!(
            "rank {rank}: {} samples; the first is sample {} = {:?}…",
            ids.len(),
            ids[0],
            &tokens[..4]
        );
    }
    Ok(())
}
