use cache_core::cached;

#[cached(prefix = "balance", ttl = 60, local = "no")]
async fn local_a_string(account: u32) -> u64 {
    u64::from(account)
}

#[cached(prefix = "balance", ttl = 60, local = 0)]
async fn local_a_number(account: u32) -> u64 {
    u64::from(account)
}

#[cached(prefix = "balance", ttl = 60, local = false, local = true)]
async fn local_twice(account: u32) -> u64 {
    u64::from(account)
}

fn main() {}
