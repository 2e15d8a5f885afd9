//! The tensor layer on burn's CPU backend (Flex): tensors go through the host path and must give
//! exactly what the buffer collectives give, in their own dtype.

mod common;

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use common::with_ranks;
use half::bf16;
use tessera_dist::{Communicator, DistError, Op, TensorPath};

type B = Flex;

fn values(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.37 - 11.0 + rank as f32 * 1e6)
        .collect()
}

fn tensor(data: Vec<f32>, dtype: DType) -> Tensor<B, 1> {
    let len = data.len();
    Tensor::from_data(TensorData::new(data, [len]), (&Default::default(), dtype))
}

#[test]
fn world_size_1_returns_tensors_untouched() {
    let mut comm = Communicator::single();
    assert_eq!(comm.tensor_path::<B>(), TensorPath::Identity);
    let t = tensor(values(0, 10), DType::F32);
    let expected = t.to_data();
    for out in [
        comm.all_reduce_tensor(t.clone()).unwrap(),
        comm.reduce_scatter_tensor(t.clone()).unwrap(),
        comm.all_gather_tensor(t.clone()).unwrap(),
        comm.broadcast_tensor(t.clone(), 0).unwrap(),
    ] {
        assert_eq!(out.into_data(), expected);
    }
    assert!(matches!(
        comm.broadcast_tensor(t, 1),
        Err(DistError::Argument {
            op: Op::Broadcast,
            ..
        })
    ));
}

#[test]
fn f32_tensors_match_the_buffer_collectives_bit_for_bit() {
    let world = 3;
    let len = 3 * 1001;
    let results = with_ranks(world, |mut comm| {
        assert_eq!(comm.tensor_path::<B>(), TensorPath::Host);
        let r = comm.rank();
        let mine = values(r, len);

        let by_tensor = [
            comm.all_reduce_tensor(tensor(mine.clone(), DType::F32))
                .unwrap(),
            comm.reduce_scatter_tensor(tensor(mine.clone(), DType::F32))
                .unwrap(),
            comm.all_gather_tensor(tensor(mine.clone(), DType::F32))
                .unwrap(),
            comm.broadcast_tensor(tensor(mine.clone(), DType::F32), 1)
                .unwrap(),
        ]
        .map(|t| t.into_data().to_vec::<f32>().unwrap());

        let mut all_reduce = mine.clone();
        comm.all_reduce(&mut all_reduce).unwrap();
        let mut reduce_scatter = vec![0.0; len / world];
        comm.reduce_scatter(&mine, &mut reduce_scatter).unwrap();
        let mut all_gather = vec![0.0; len * world];
        comm.all_gather(&mine, &mut all_gather).unwrap();
        let mut broadcast = mine.clone();
        comm.broadcast(&mut broadcast, 1).unwrap();
        (
            by_tensor,
            [all_reduce, reduce_scatter, all_gather, broadcast],
        )
    });
    for (rank, (by_tensor, by_buffer)) in results.iter().enumerate() {
        for (op, (t, b)) in ["all_reduce", "reduce_scatter", "all_gather", "broadcast"]
            .iter()
            .zip(by_tensor.iter().zip(by_buffer))
        {
            let (t, b): (&[u8], &[u8]) = (bytemuck::cast_slice(t), bytemuck::cast_slice(b));
            assert_eq!(t, b, "{op} on rank {rank}");
        }
        assert_eq!(by_tensor[1].len(), len / 3);
        assert_eq!(by_tensor[2].len(), len * 3);
    }
    // The buffers are the rank-order sums (the tensor path adds nothing of its own).
    let expected: Vec<f32> = (0..len)
        .map(|i| (values(0, len)[i] + values(1, len)[i]) + values(2, len)[i])
        .collect();
    assert_eq!(results[0].1[0], expected);
}

#[test]
fn bf16_tensors_keep_their_dtype_and_sum_in_f32() {
    let len = 64;
    let results = with_ranks(3, |mut comm| {
        let r = comm.rank();
        // 256 + 1 + 1 is 258 in f32 (exact in bf16), but would stay 256 in bf16 step by step.
        let mine = if r == 0 {
            vec![256.0; len]
        } else {
            vec![1.0; len]
        };
        let out = comm.all_reduce_tensor(tensor(mine, DType::BF16)).unwrap();
        out.into_data()
    });
    for data in results {
        assert_eq!(data.dtype, DType::BF16);
        assert!(
            data.to_vec::<bf16>()
                .unwrap()
                .iter()
                .all(|v| v.to_f32() == 258.0)
        );
    }
}

#[test]
fn a_tensor_not_divisible_by_the_world_size_is_an_argument_error() {
    let results = with_ranks(2, |mut comm| {
        let err = comm
            .reduce_scatter_tensor(tensor(vec![1.0; 5], DType::F32))
            .unwrap_err();
        // Still usable: nothing was sent.
        let ok = comm
            .all_reduce_tensor(tensor(vec![1.0; 4], DType::F32))
            .unwrap();
        (err, ok.into_data().to_vec::<f32>().unwrap())
    });
    for (err, sum) in results {
        assert!(
            matches!(
                err,
                DistError::Argument {
                    op: Op::ReduceScatter,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(sum, vec![2.0; 4]);
    }
}
