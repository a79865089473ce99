use cache_core::cached;

#[cached(prefix = "summary", ttl = 60, tags = "user")]
async fn summary(user_id: u64) -> u64 {
    user_id
}

fn main() {}
