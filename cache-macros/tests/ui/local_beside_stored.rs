use cache_core::cached;

#[cached(prefix = "quote", ttl = 5, stale = 300, local = true)]
async fn quote(symbol: String) -> u64 {
    symbol.len() as u64
}

#[cached(prefix = "summary", ttl = 60, local = true, tags = [format!("user:{user_id}")])]
async fn summary(user_id: u64) -> String {
    format!("summary of {user_id}")
}

#[cached(prefix = "secret", ttl = 60, encrypt, local = true, compress)]
async fn secret(tenant: u32) -> String {
    format!("sk-{tenant}")
}

// `local = false` says what these options do anyway: accepted.
#[cached(prefix = "packed", ttl = 60, compress, local = false)]
async fn packed(n: u32) -> Vec<u32> {
    vec![n; 4096]
}

fn main() {}
