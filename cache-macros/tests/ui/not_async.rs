use cache_core::cached;

#[cached(prefix = "embedding", ttl = 60)]
fn embed(text: &str) -> usize {
    text.len()
}

fn main() {}
