use cache_core::cached;

#[cached(prefix = "embedding", ttl = 60, skips(text))]
async fn embed(text: &str) -> usize {
    text.len()
}

#[cached(Prefix = "embedding", ttl = 60)]
async fn embed_capitalized(text: &str) -> usize {
    text.len()
}

#[cached("embedding", ttl = 60)]
async fn embed_positional(text: &str) -> usize {
    text.len()
}

fn main() {}
