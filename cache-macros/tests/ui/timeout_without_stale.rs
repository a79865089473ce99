use cache_core::cached;

#[cached(prefix = "quote", ttl = 5, timeout = 2)]
async fn quote(symbol: String) -> u64 {
    symbol.len() as u64
}

fn main() {}
