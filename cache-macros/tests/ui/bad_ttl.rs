use cache_core::cached;

#[cached(prefix = "embedding", ttl = "1h")]
async fn embed(text: &str) -> usize {
    text.len()
}

fn main() {}
