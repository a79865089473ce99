use cache_core::cached;

#[cached(prefix = "quote", ttl = 5, stale = 0)]
async fn quote(symbol: String) -> u64 {
    symbol.len() as u64
}

fn main() {}
