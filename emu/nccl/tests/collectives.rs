//! Every collective, data type and reduction over host buffers, with 2 and 3 ranks as threads
//! of this process, on blocking and non-blocking communicators, through the C API.

mod common;

use std::ffi::CStr;
use std::ptr;
use std::sync::mpsc;

use common::*;
use convoy_nccl_emu::*;

/// Rank `r`'s value at `i`, an integer: the ranks' offsets sum to a multiple of `n`, so every
/// mean is exact; signed types and floats get negatives too.
fn value(t: DataType, n: usize, r: usize, i: usize) -> f64 {
    let step = if n.is_multiple_of(2) { 2 } else { 1 };
    let base = (i % 7) as f64 + (r * step) as f64;
    if signed(t) { base - 3.0 } else { base }
}

/// What rank order reduction gives, computed exactly and then stored in `t` once.
fn expected(t: DataType, op: RedOp, n: usize, i: usize) -> f64 {
    let xs: Vec<f64> = (0..n).map(|r| value(t, n, r, i)).collect();
    let exact = match op {
        RedOp::Sum => xs.iter().sum(),
        RedOp::Prod => xs.iter().product(),
        RedOp::Max => xs.iter().cloned().fold(f64::MIN, f64::max),
        RedOp::Min => xs.iter().cloned().fold(f64::MAX, f64::min),
        RedOp::Avg => xs.iter().sum::<f64>() / n as f64,
    };
    stored(t, exact)
}

#[test]
fn all_reduce_every_type_and_operation() {
    host_memory();
    const COUNT: usize = 37;
    for n in [2, 3] {
        let id = unique_id();
        let failures = ranks(n, |r| {
            let comm = init_blocking(n, id, r);
            let mut bad = Vec::new();
            for t in ALL_TYPES {
                for op in ALL_OPS {
                    let input: Vec<f64> = (0..COUNT).map(|i| value(t, n, r, i)).collect();
                    let send = encode(t, &input);
                    let mut recv = vec![0xAB; send.len()];
                    assert_eq!(
                        all_reduce(comm, &send, &mut recv, t, op),
                        NcclResult::Success
                    );
                    let got = decode(t, &recv);
                    let want: Vec<f64> = (0..COUNT).map(|i| expected(t, op, n, i)).collect();
                    if got != want {
                        bad.push(format!("{n} ranks, {t:?} {op:?}: {got:?} != {want:?}"));
                    }
                    // The send buffer is untouched.
                    assert_eq!(decode(t, &send), input);
                }
            }
            destroy(comm);
            bad
        });
        for (r, bad) in failures.into_iter().enumerate() {
            assert!(bad.is_empty(), "rank {r}: {bad:#?}");
        }
    }
}

#[test]
fn sums_are_in_rank_order_and_identical_on_every_rank() {
    host_memory();
    // (1e8 + 1) - 1e8 is 0 in f32, whereas any other order would give 1 somewhere.
    let id = unique_id();
    let outs = ranks(3, |r| {
        let comm = init_blocking(3, id, r);
        let x = [[1e8f32, 1e8], [1.0, -1e8], [-1e8, 1.0]][r];
        let mut buf = f32s(&x);
        let send = buf.clone();
        assert_eq!(
            all_reduce(comm, &send, &mut buf, DataType::Float32, RedOp::Sum),
            NcclResult::Success
        );
        destroy(comm);
        to_f32s(&buf)
    });
    for out in &outs {
        assert_eq!(out, &[0.0, 1.0]);
    }
}

#[test]
fn a_large_in_place_all_reduce() {
    host_memory();
    const N: usize = 1 << 20;
    let id = unique_id();
    let outs = ranks(2, |r| {
        let comm = init_blocking(2, id, r);
        let mut buf = f32s(
            &(0..N)
                .map(|i| ((i % 1000) * (r + 1)) as f32)
                .collect::<Vec<_>>(),
        );
        let p = void(&mut buf);
        // SAFETY: in place on a live buffer, blocking.
        let res = unsafe {
            ncclAllReduce(
                p,
                p,
                N,
                DataType::Float32 as u32,
                RedOp::Avg as u32,
                comm.raw(),
                ptr::null_mut(),
            )
        };
        assert_eq!(res, NcclResult::Success);
        destroy(comm);
        to_f32s(&buf)
    });
    let want: Vec<f32> = (0..N).map(|i| (i % 1000) as f32 * 1.5).collect();
    assert_eq!(outs[0], want);
    assert_eq!(outs[1], want);
}

#[test]
fn broadcast_reduce_gather_scatter() {
    host_memory();
    for n in [2, 3] {
        let id = unique_id();
        ranks(n, |r| {
            let comm = init_blocking(n, id, r);
            let t = DataType::Int32;
            let mine: Vec<f64> = (0..5).map(|i| (10 * r + i) as f64).collect();
            let send = encode(t, &mine);

            for root in 0..n {
                // Broadcast from each root.
                let mut recv = vec![0; send.len()];
                // SAFETY: live buffers, blocking.
                let res = unsafe {
                    ncclBroadcast(
                        cvoid(&send),
                        void(&mut recv),
                        5,
                        t as u32,
                        root as i32,
                        comm.raw(),
                        ptr::null_mut(),
                    )
                };
                assert_eq!(res, NcclResult::Success);
                let want: Vec<f64> = (0..5).map(|i| (10 * root + i) as f64).collect();
                assert_eq!(decode(t, &recv), want, "{n} ranks: broadcast from {root}");

                // In place (ncclBcast).
                let mut buf = send.clone();
                // SAFETY: as above.
                let res = unsafe {
                    ncclBcast(
                        void(&mut buf),
                        5,
                        t as u32,
                        root as i32,
                        comm.raw(),
                        ptr::null_mut(),
                    )
                };
                assert_eq!(res, NcclResult::Success);
                assert_eq!(decode(t, &buf), want, "{n} ranks: bcast from {root}");

                // Reduce to each root: the others' receive buffers stay as they were.
                let mut recv = vec![0x5A; send.len()];
                // SAFETY: as above.
                let res = unsafe {
                    ncclReduce(
                        cvoid(&send),
                        void(&mut recv),
                        5,
                        t as u32,
                        RedOp::Max as u32,
                        root as i32,
                        comm.raw(),
                        ptr::null_mut(),
                    )
                };
                assert_eq!(res, NcclResult::Success);
                if r == root {
                    let want: Vec<f64> = (0..5).map(|i| (10 * (n - 1) + i) as f64).collect();
                    assert_eq!(decode(t, &recv), want, "{n} ranks: reduce to {root}");
                } else {
                    assert!(recv.iter().all(|&b| b == 0x5A), "non-root buffer touched");
                }
            }

            // All-gather, out of place and in place.
            let mut recv = vec![0; send.len() * n];
            // SAFETY: live buffers, blocking.
            let res = unsafe {
                ncclAllGather(
                    cvoid(&send),
                    void(&mut recv),
                    5,
                    t as u32,
                    comm.raw(),
                    ptr::null_mut(),
                )
            };
            assert_eq!(res, NcclResult::Success);
            let want: Vec<f64> = (0..n)
                .flat_map(|k| (0..5).map(move |i| (10 * k + i) as f64))
                .collect();
            assert_eq!(decode(t, &recv), want, "{n} ranks: all-gather");
            let mut buf = vec![0; send.len() * n];
            buf[r * send.len()..(r + 1) * send.len()].copy_from_slice(&send);
            let at = buf[r * send.len()..].as_ptr().cast();
            // SAFETY: NCCL's in-place form: the send buffer is this rank's block of recv.
            let res = unsafe {
                ncclAllGather(at, void(&mut buf), 5, t as u32, comm.raw(), ptr::null_mut())
            };
            assert_eq!(res, NcclResult::Success);
            assert_eq!(decode(t, &buf), want, "{n} ranks: in-place all-gather");

            // Reduce-scatter: block r of the sum.
            let big: Vec<f64> = (0..5 * n).map(|i| (i * (r + 1)) as f64).collect();
            let big = encode(t, &big);
            let mut recv = vec![0; send.len()];
            // SAFETY: live buffers, blocking.
            let res = unsafe {
                ncclReduceScatter(
                    cvoid(&big),
                    void(&mut recv),
                    5,
                    t as u32,
                    RedOp::Sum as u32,
                    comm.raw(),
                    ptr::null_mut(),
                )
            };
            assert_eq!(res, NcclResult::Success);
            let factor: usize = (1..=n).sum();
            let want: Vec<f64> = (5 * r..5 * (r + 1)).map(|i| (i * factor) as f64).collect();
            assert_eq!(decode(t, &recv), want, "{n} ranks: reduce-scatter");
            destroy(comm);
        });
    }
}

#[test]
fn a_group_of_in_place_averages_like_the_reducer() {
    host_memory();
    let id = unique_id();
    let outs = ranks(2, |r| {
        let comm = init_nonblocking(2, id, r);
        assert_eq!(settle(comm), NcclResult::Success);
        let mut grads = f32s(&(0..100).map(|i| ((r + 1) * i) as f32).collect::<Vec<_>>());
        let base = grads.as_mut_ptr();
        assert_eq!(ncclGroupStart(), NcclResult::Success);
        for (start, len) in [(0usize, 30usize), (30, 50), (90, 10)] {
            // SAFETY: disjoint spans of a buffer that outlives the settle below.
            let p = unsafe { base.add(start * 4) }.cast();
            // SAFETY: as above; inside a group the call is only recorded.
            let res = unsafe {
                ncclAllReduce(
                    p,
                    p,
                    len,
                    DataType::Float32 as u32,
                    RedOp::Avg as u32,
                    comm.raw(),
                    ptr::null_mut(),
                )
            };
            assert_eq!(res, NcclResult::Success);
        }
        let end = ncclGroupEnd();
        assert!(
            matches!(end, NcclResult::InProgress | NcclResult::Success),
            "{end:?}"
        );
        assert_eq!(settle(comm), NcclResult::Success);
        // SAFETY: a live handle.
        let fin = unsafe { ncclCommFinalize(comm.raw()) };
        assert!(matches!(fin, NcclResult::InProgress | NcclResult::Success));
        assert_eq!(settle(comm), NcclResult::Success);
        destroy(comm);
        to_f32s(&grads)
    });
    for (r, out) in outs.iter().enumerate() {
        for (i, &x) in out.iter().enumerate() {
            // The mean of i and 2i inside the spans; each rank's own value outside them.
            let want = match i {
                80..90 => ((r + 1) * i) as f32,
                _ => 1.5 * i as f32,
            };
            assert_eq!(x, want, "rank {r} element {i}");
        }
    }
}

#[test]
fn non_blocking_calls_are_in_progress_until_every_rank_has_called() {
    host_memory();
    let id = unique_id();
    let (called_tx, called_rx) = mpsc::channel();
    let called_rx = std::sync::Mutex::new(called_rx);
    let outs = ranks(2, |r| {
        let comm = init_nonblocking(2, id, r);
        assert_eq!(settle(comm), NcclResult::Success);
        let send = f32s(&[r as f32 + 1.0; 4]);
        let mut recv = vec![0; 16];
        if r == 1 {
            // Rank 1 calls only once rank 0 has seen its own call in progress.
            called_rx.lock().unwrap().recv().expect("rank 0 called");
        }
        let res = all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
        if r == 0 {
            assert_eq!(res, NcclResult::InProgress, "rank 1 has not called yet");
            assert_eq!(async_state(comm), NcclResult::InProgress);
            called_tx.send(()).expect("rank 1 waits");
        }
        assert_eq!(settle(comm), NcclResult::Success);
        destroy(comm);
        to_f32s(&recv)
    });
    assert_eq!(outs, vec![vec![3.0; 4]; 2]);
}

#[test]
fn send_and_receive_around_a_ring_in_one_group() {
    host_memory();
    for n in [2, 3] {
        let id = unique_id();
        let outs = ranks(n, |r| {
            let comm = init_blocking(n, id, r);
            let send = f32s(&[r as f32; 8]);
            let mut recv = vec![0; 32];
            let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
            assert_eq!(ncclGroupStart(), NcclResult::Success);
            // The receive first: a group completes whatever the order of its calls.
            // SAFETY: live buffers, waited for at ncclGroupEnd.
            unsafe {
                assert_eq!(
                    ncclRecv(
                        void(&mut recv),
                        8,
                        DataType::Float32 as u32,
                        prev as i32,
                        comm.raw(),
                        ptr::null_mut()
                    ),
                    NcclResult::Success
                );
                assert_eq!(
                    ncclSend(
                        cvoid(&send),
                        8,
                        DataType::Float32 as u32,
                        next as i32,
                        comm.raw(),
                        ptr::null_mut()
                    ),
                    NcclResult::Success
                );
            }
            assert_eq!(ncclGroupEnd(), NcclResult::Success);
            destroy(comm);
            to_f32s(&recv)
        });
        for (r, out) in outs.iter().enumerate() {
            assert_eq!(
                out,
                &vec![((r + n - 1) % n) as f32; 8],
                "{n} ranks, rank {r}"
            );
        }
    }
}

#[test]
fn one_thread_drives_every_rank_with_comm_init_all() {
    host_memory();
    let mut comms = [ptr::null_mut(); 3];
    // SAFETY: room for 3 handles; no device list.
    let res = unsafe { ncclCommInitAll(comms.as_mut_ptr(), 3, ptr::null()) };
    assert_eq!(res, NcclResult::Success);
    let mut bufs: Vec<Vec<u8>> = (0..3).map(|r| f32s(&[r as f32 * 2.0; 3])).collect();
    assert_eq!(ncclGroupStart(), NcclResult::Success);
    for (c, b) in comms.iter().zip(bufs.iter_mut()) {
        let p = void(b);
        // SAFETY: live buffers, waited for at ncclGroupEnd.
        let res = unsafe {
            ncclAllReduce(
                p,
                p,
                3,
                DataType::Float32 as u32,
                RedOp::Sum as u32,
                *c,
                ptr::null_mut(),
            )
        };
        assert_eq!(res, NcclResult::Success);
    }
    assert_eq!(ncclGroupEnd(), NcclResult::Success);
    for b in &bufs {
        assert_eq!(to_f32s(b), [6.0; 3]);
    }
    for (r, c) in comms.iter().enumerate() {
        let (mut count, mut rank) = (0, -1);
        // SAFETY: live handles and locals.
        unsafe {
            assert_eq!(ncclCommCount(*c, &mut count), NcclResult::Success);
            assert_eq!(ncclCommUserRank(*c, &mut rank), NcclResult::Success);
        }
        assert_eq!((count, rank), (3, r as i32));
    }
    // Destroyed one after another by the same thread: rank 0 must not wait for the others.
    for c in comms {
        // SAFETY: live handles, destroyed once.
        assert_eq!(unsafe { ncclCommDestroy(c) }, NcclResult::Success);
    }
}

#[test]
fn a_single_rank_reduces_to_itself() {
    host_memory();
    let comm = init_blocking(1, unique_id(), 0);
    let send = f32s(&[1.5, -2.0]);
    let mut recv = vec![0; 8];
    assert_eq!(
        all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Avg),
        NcclResult::Success
    );
    assert_eq!(to_f32s(&recv), [1.5, -2.0]);
    destroy(comm);
}

#[test]
fn version_strings_and_properties() {
    host_memory();
    let mut v = 0;
    // SAFETY: a live local.
    assert_eq!(unsafe { ncclGetVersion(&mut v) }, NcclResult::Success);
    assert_eq!(v, 22105);
    for (code, text) in [
        (0, "no error"),
        (6, "remote process exited or there was a network error"),
        (7, "NCCL operation in progress"),
        (99, "unknown result code"),
    ] {
        // SAFETY: static NUL-terminated strings.
        let s = unsafe { CStr::from_ptr(ncclGetErrorString(code)) };
        assert_eq!(s.to_str().unwrap(), text);
    }
    let comm = init_blocking(1, unique_id(), 0);
    let (mut count, mut rank, mut dev) = (0, -1, -1);
    // SAFETY: live handle and locals.
    unsafe {
        assert_eq!(ncclCommCount(comm.raw(), &mut count), NcclResult::Success);
        assert_eq!(ncclCommUserRank(comm.raw(), &mut rank), NcclResult::Success);
        assert_eq!(ncclCommCuDevice(comm.raw(), &mut dev), NcclResult::Success);
    }
    assert_eq!((count, rank, dev), (1, 0, 0));
    assert_eq!(async_state(comm), NcclResult::Success);
    destroy(comm);
}

#[test]
fn bad_arguments_are_errors_naming_them() {
    host_memory();
    let comm = init_blocking(1, unique_id(), 0);
    let buf = [0u8; 8];
    let mut out = [0u8; 8];
    let call = |dtype: u32, op: u32, send: *const u8, recv: *mut u8, c: CommHandle| {
        // SAFETY: live buffers or null (refused before use).
        unsafe { ncclAllReduce(send.cast(), recv.cast(), 2, dtype, op, c, ptr::null_mut()) }
    };
    let p = out.as_mut_ptr();
    assert_eq!(
        call(42, 0, buf.as_ptr(), p, comm.raw()),
        NcclResult::InvalidArgument
    );
    assert!(
        last_error(Handle(0)).contains("42 is not an NCCL data type"),
        "{}",
        last_error(Handle(0))
    );
    assert_eq!(
        call(10, 0, buf.as_ptr(), p, comm.raw()),
        NcclResult::InvalidArgument
    );
    assert_eq!(
        call(7, 9, buf.as_ptr(), p, comm.raw()),
        NcclResult::InvalidArgument
    );
    assert_eq!(
        call(7, 0, ptr::null(), p, comm.raw()),
        NcclResult::InvalidArgument
    );
    assert!(last_error(Handle(0)).contains("sendbuff is null"));
    let stale = ptr::without_provenance_mut(0x12345);
    assert_eq!(
        call(7, 0, buf.as_ptr(), p, stale),
        NcclResult::InvalidArgument
    );
    assert!(last_error(Handle(0)).contains("not a live communicator"));
    // SAFETY: a live handle; root out of range is refused.
    let res = unsafe {
        ncclBroadcast(
            buf.as_ptr().cast(),
            p.cast(),
            2,
            7,
            1,
            comm.raw(),
            ptr::null_mut(),
        )
    };
    assert_eq!(res, NcclResult::InvalidArgument);
    assert_eq!(ncclGroupEnd(), NcclResult::InvalidUsage);
    // A failed call inside a group fails the group.
    assert_eq!(ncclGroupStart(), NcclResult::Success);
    assert_eq!(
        call(42, 0, buf.as_ptr(), p, comm.raw()),
        NcclResult::InvalidArgument
    );
    assert_eq!(ncclGroupEnd(), NcclResult::InvalidArgument);
    // None of that broke the communicator.
    assert_eq!(call(7, 0, buf.as_ptr(), p, comm.raw()), NcclResult::Success);
    destroy(comm);
    // Destroyed: the handle is gone.
    // SAFETY: any handle value is checked.
    let again = unsafe { ncclCommDestroy(comm.raw()) };
    assert_eq!(again, NcclResult::InvalidArgument);

    let mut c = ptr::null_mut();
    let id = unique_id();
    // SAFETY: a live local.
    unsafe {
        assert_eq!(
            ncclCommInitRank(&mut c, 2, id, 2),
            NcclResult::InvalidArgument
        );
        assert_eq!(
            ncclCommInitRank(&mut c, 0, id, 0),
            NcclResult::InvalidArgument
        );
        let foreign = UniqueId { internal: [1; 128] };
        assert_eq!(
            ncclCommInitRank(&mut c, 1, foreign, 0),
            NcclResult::InvalidArgument
        );
    }
}

#[test]
fn ranks_calling_different_collectives_is_an_error_on_every_rank() {
    host_memory();
    let id = unique_id();
    let results = ranks(2, |r| {
        let comm = init_blocking(2, id, r);
        let send = f32s(&[1.0; 4]);
        let mut recv = [0; 16];
        // Rank 1 reduces 3 elements where rank 0 reduces 4.
        let n = if r == 0 { 16 } else { 12 };
        let res = all_reduce(
            comm,
            &send[..n],
            &mut recv[..n],
            DataType::Float32,
            RedOp::Sum,
        );
        let text = last_error(comm);
        abort(comm);
        (res, text)
    });
    for (r, (res, text)) in results.iter().enumerate() {
        assert_eq!(*res, NcclResult::InvalidUsage, "rank {r}: {text}");
        assert!(
            text.contains("ranks called different collectives"),
            "rank {r}: {text}"
        );
        assert!(
            text.contains("AllReduce(4 × Float32, Sum)")
                && text.contains("AllReduce(3 × Float32, Sum)"),
            "{text}"
        );
    }
}
