use cache_core::cached;

#[cached(prefix = "report", ttl = 60, lock = 0)]
async fn report(id: u64) -> u64 {
    id
}

fn main() {}
