use cache_core::cached;

#[cached(prefix = "embedding", ttl = 60, tll = 5)]
async fn embed(text: &str) -> usize {
    text.len()
}

fn main() {}
