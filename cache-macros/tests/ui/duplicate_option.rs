use cache_core::cached;

#[cached(prefix = "embedding", ttl = 60, prefix = "other")]
async fn embed(text: &str) -> usize {
    text.len()
}

fn main() {}
