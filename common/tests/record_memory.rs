//! A v2 record's buffer grows with the bytes that arrive, not with the length a peer
//! announces (issue 8 §3): checked with a global allocator that remembers the largest
//! single allocation. One test only, in its own binary, so nothing else allocates in
//! between.

use deploy_common::wire::frame::{read_frame, read_frame_within, RecordBudget, MAX_RECORD};
use deploy_common::wire::WireError;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only recording sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        // SAFETY: same layout, same contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[tokio::test]
async fn an_announced_record_is_not_allocated_before_it_arrives() {
    // 16 MiB announced, 10 bytes sent, then the peer goes away.
    let mut wire = (MAX_RECORD as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(b"0123456789");
    LARGEST.store(0, Ordering::SeqCst);
    let mut reader = &wire[..];
    let got = read_frame(&mut reader, MAX_RECORD).await;
    assert!(matches!(got, Err(WireError::Closed)), "{got:?}");
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(
        largest < 1 << 20,
        "a 16 MiB record of which 10 bytes arrived allocated {largest} bytes at once"
    );

    // A whole record still arrives whole.
    let mut wire = 200_000u32.to_be_bytes().to_vec();
    wire.extend(std::iter::repeat_n(7u8, 200_000));
    let mut reader = &wire[..];
    let (_, payload) = read_frame(&mut reader, MAX_RECORD).await.unwrap().unwrap();
    assert_eq!(payload.len(), 200_000);

    // A budget bounds the large records in flight: a second one waits for nothing, it
    // is refused while the first holds the budget, and accepted once it is given back.
    let budget = RecordBudget::new(300_000);
    let (mut client, mut server) = tokio::io::duplex(1 << 20);
    use tokio::io::AsyncWriteExt;
    client.write_all(&200_000u32.to_be_bytes()).await.unwrap();
    let first = tokio::spawn({
        let budget = budget.clone();
        async move { read_frame_within(&mut server, MAX_RECORD, &budget).await }
    });
    while budget.available() == 300_000 {
        tokio::task::yield_now().await;
    }
    assert_eq!(budget.available(), 100_000);
    let mut other = &wire[..];
    assert!(matches!(
        read_frame_within(&mut other, MAX_RECORD, &budget).await,
        Err(WireError::Busy { len: 200_000 })
    ));
    // Small records need no reservation.
    let mut small = 10u32.to_be_bytes().to_vec();
    small.extend_from_slice(b"0123456789");
    let mut small = &small[..];
    assert!(read_frame_within(&mut small, MAX_RECORD, &budget)
        .await
        .unwrap()
        .is_some());
    drop(client);
    assert!(matches!(first.await.unwrap(), Err(WireError::Closed)));
    assert_eq!(budget.available(), 300_000);
}
